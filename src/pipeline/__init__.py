"""From a config to a run folder: process setup, config, loggers, callbacks, checkpoints, the Run,
training (one run or many seeds batched)."""
