"""Networks: the dual-head VQ autoencoder, the conditional U-Net, their export wrappers."""
