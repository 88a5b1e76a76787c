"""What runs and sweeps leave for people: figures, Markdown and CSV tables, W&B."""
