"""Timing and quality scripts that print tables: `python -m benchmarks.<name> --help`."""
