"""The argparse front end: arguments into configs, progress into bars."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
