"""PriorCLIP: visual-prior guided vision-language models for remote sensing image-text retrieval.

The model library (`priorclip.models`) is importable on its own; training, evaluation and search
build on it and are never imported by it. The top-level names below are loaded on first use, so
`import priorclip.data` does not pay for importing torch model code.
"""
__version__ = "0.1.0"

_LAZY = {"create_model", "list_models", "load_checkpoint", "load_official_checkpoint", "save_checkpoint"}
__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'priorclip' has no attribute {name!r}")
