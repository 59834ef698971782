"""PriorCLIP: visual-prior guided vision-language models for remote sensing image-text retrieval.

The model library (`priorclip.models`) is importable on its own; training, evaluation and search
build on it and are never imported by it.
"""
__version__ = "0.1.0"
