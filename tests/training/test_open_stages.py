"""Open domain: pretrain, then finetune with frozen prior and text tower (text embeddings cached)."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from priorclip.training.loop import Trainer, train
from priorclip.training.recipe import recipe_from_dict

from training_helpers import base_recipe, read_log

TINY_OPEN = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                             "prior_layers": [1, 1, 1, 1], "prior_width": 8},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1}}


def test_pretrain_then_finetune_freezes_prior_and_text(tiny_dataset, tmp_path):
    data = {"path": str(tiny_dataset), "labels": "none", "augment": False, "test_split": None}
    pre = train(recipe_from_dict(base_recipe(tiny_dataset, stage="pretrain", model="priorclip-open-small",
                                             model_overrides=TINY_OPEN, epochs=1, data=data)), out_dir=tmp_path / "pre")
    init = pre / "checkpoints" / "last"
    ft_recipe = recipe_from_dict(base_recipe(tiny_dataset, stage="finetune", init_checkpoint=str(init), epochs=1,
                                             lr=1e-3, data=data))
    trainer = Trainer(ft_recipe, tmp_path / "probe")
    trainer.build()
    frozen = {n for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("res_visual.") for n in frozen) and "token_embedding.weight" in frozen
    assert not any(n.startswith("visual.") for n in frozen) and "logit_scale" not in frozen
    assert trainer.text_frozen
    cache = trainer._text_cache()
    assert cache.shape == (trainer.train_ds.num_captions, 32)
    assert torch.allclose(cache.norm(dim=1), torch.ones(len(cache)), atol=1e-5)

    ft = train(ft_recipe, out_dir=tmp_path / "ft")
    before, after = load_file(str(init / "model.safetensors")), load_file(str(ft / "checkpoints" / "last" / "model.safetensors"))
    for name in before:
        same = torch.equal(before[name], after[name])
        if name.startswith(("res_visual.", "token_embedding", "transformer.", "ln_final", "text_projection")):
            assert same, f"{name} changed although frozen"
    assert not torch.equal(before["visual.proj"], after["visual.proj"])  # the image tower trained
    assert read_log(ft)[-1]["event"] == "end"
