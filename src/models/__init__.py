"""The autoencoders: losses, encoder/decoder bodies, the shared Lightning base and one file per model."""
