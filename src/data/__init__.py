"""LightningDataModules of the datasets, and the OOD sets evaluated against them."""
