"""Proxy sweeps (runner.py) and the power-law fit (fit.py)."""
