"""Two-stage training: the VQ autoencoder, then the conditional U-Net on cached latents."""
