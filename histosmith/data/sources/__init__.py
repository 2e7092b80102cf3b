"""Readers that turn labelled tiles from other layouts into HistoSmith datasets."""
