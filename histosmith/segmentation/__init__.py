"""The downstream nucleus segmenter (HoVer-Net style) and the real-vs-synthetic experiment around it."""
