"""Training and evaluation entry points (autoencoder, denoiser, evaluation report)."""
