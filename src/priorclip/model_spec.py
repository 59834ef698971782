"""What a `--model` argument may name, for every verb that takes one (index, evaluate, zeroshot)
and for search/serve reloading an index's model.

A checkpoint directory is the normal case. A registered model name means random weights: a bare
name used to be accepted with a warning and drew fresh weights at every call, so the same query
on the same index ranked differently each time (issue #16.7). A name is now always built under a
fixed seed, so the weights, and every number or ranking made with them, are the same at every
call with the same torch version; and the CLI passes `random_weights=False` unless the user
typed `--random-weights`, which refuses a name. Such weights are still chance-level: good for
trying the pipeline, nothing else. Library callers that do not say (`random_weights=None`, e.g.
the benchmark scripts) get the seeded weights with a warning.
"""
from __future__ import annotations

import sys
from pathlib import Path

from priorclip.errors import ConfigError

#: Seed of the random initialisation of a model name under `random_weights=True`.
RANDOM_SEED = 0


def is_model_name(spec: str | Path) -> bool:
    """True for a registered model name (see `priorclip models`) that is not also a directory."""
    from priorclip.models import list_models

    return not Path(spec).expanduser().is_dir() and str(spec) in list_models()


def load_model_spec(spec: str | Path, device: str = "cpu", *, random_weights: bool | None = None,
                    purpose: str = "using", warn: bool = True):
    """The model `spec` names: a checkpoint directory, or a registered model name built with seeded
    random weights (seed `RANDOM_SEED`; the global RNG is left untouched).

    `random_weights=False` refuses a model name, `True` refuses a checkpoint directory (each a
    ConfigError saying what to pass instead); `None` accepts both.
    """
    import torch

    from priorclip.models import create_model, load_checkpoint, load_model

    path = Path(spec).expanduser()
    if path.is_dir():
        if random_weights:
            raise ConfigError(f"--random-weights applies to a model name, but --model {spec} is a checkpoint "
                              "directory; drop --random-weights to use its trained weights")
        return load_checkpoint(path, map_location=device).to(device)
    if not is_model_name(spec):
        return load_model(spec, device, purpose=purpose)  # raises: neither a directory nor a name
    if random_weights is False:
        raise ConfigError(
            f"--model {spec!r} is a model name, not a checkpoint directory: it has no trained weights. "
            "Pass a checkpoint directory (written by `priorclip train` or `priorclip convert`), or add "
            f"--random-weights to use seeded random weights (seed {RANDOM_SEED}; chance-level results, "
            "for trying the pipeline)")
    if warn:
        print(f"warning: {purpose} model name {spec!r} with seeded RANDOM weights (seed {RANDOM_SEED}): results "
              "repeat from run to run but are chance-level", file=sys.stderr)
    with torch.random.fork_rng(devices=[]):  # built on the CPU: the same weights whatever --device is
        torch.manual_seed(RANDOM_SEED)
        model = create_model(str(spec))
    return model.to(device)
