"""Shipped generators, one folder each (see histosmith.runtime.pretrained and each folder's MODEL_CARD.md)."""
