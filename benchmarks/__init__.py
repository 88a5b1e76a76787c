"""Benchmarks of the framework (not tests, not part of the package): `make bench`."""
