"""Inference backends: each runs the whole DDIM loop plus the decoder for one batch."""
