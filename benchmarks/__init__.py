"""Benchmark scripts that print figures (``python -m benchmarks.<name> --help``); they assert nothing.

A regular package, so that it is found before any installed distribution that ships a top-level
``benchmarks`` package (opacus does).
"""
