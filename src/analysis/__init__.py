"""Analyses of finished runs: sweep summaries over seeds, report 004's Table 1, results pages."""
