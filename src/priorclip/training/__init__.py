"""Training: recipes (YAML), the loop for every stage, run-directory checkpoints.

    from priorclip.training import load_recipe, train
    train(load_recipe("configs/closed.yaml", ["data.path=ucm-captions"]), out_dir="runs/closed")
"""
from priorclip.training.recipe import Recipe, load_recipe


def train(*args, **kwargs):
    """See `priorclip.training.loop.train` (imported lazily: it pulls in torch and the models)."""
    from priorclip.training.loop import train as _train

    return _train(*args, **kwargs)


__all__ = ["Recipe", "load_recipe", "train"]
