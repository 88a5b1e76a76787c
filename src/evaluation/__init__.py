"""Evaluations after testing (declared per dataset in conf/evaluations/), and the measures they use."""
