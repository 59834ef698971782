"""PriorCLIP: visual-prior guided vision-language models for remote sensing image-text retrieval.

The model library (`priorclip.models`) is importable on its own; training, evaluation and search
build on it and are never imported by it.
"""
__version__ = "0.1.0"

from .models import create_model, list_models, load_checkpoint, load_official_checkpoint, save_checkpoint  # noqa: E402

__all__ = ["create_model", "list_models", "load_checkpoint", "load_official_checkpoint", "save_checkpoint", "__version__"]
