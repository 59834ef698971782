"""The subjects of the UCM ablation, as data: each row of the table is a chain of training stages.

A subject is trained from random weights on the UCM-captions train split with the same number of
training pairs as every other subject (`epochs` x the batches of one pass over all 8,400 pairs);
stage chains split that budget (stage 1 / stage 2). A prior, where a subject uses one, is trained
first as a 21-class scene classifier on the same split (images and scene labels only, no captions)
and frozen; it is shared by every subject of the same seed and kind ("open": the ModifiedResNet
`res_visual`, "closed": the resnet10t prior tower). `trained_prior: False` keeps the prior's random
initialisation (still frozen), so the prior's training can be credited apart from its architecture.

Stage fields: `stage` (our trainer's stage), `model` and `overrides` (stage 1 only; stage 2 starts
from stage 1's val-selected checkpoint), `epochs` ("all" | "stage1" | "stage2"), `affiliation`
(weight of the Attribution loss; it needs the scene labels). The models are sized so that every
open-domain subject trains about the same number of parameters as the plain CLIP open_clip_train
trains (9.1 M); their sizes are counted and printed by run.py.
"""
from __future__ import annotations

import copy

# The plain CLIP open_clip_train trains (and our open-domain models extend): ViT 128 px, patch 16,
# width 192, 4 layers; text context 32, width 128, 2 heads, 4 layers; embed 256: 9,143,937 parameters.
CLIP_9M = {"embed_dim": 256,
           "vision_cfg": {"image_size": 128, "layers": 4, "width": 192, "head_width": 64, "patch_size": 16},
           "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4}}
# Open-domain PriorCLIP: the same CLIP + a ModifiedResNet prior (frozen: 1.4 M parameters that do
# not train) whose output becomes the instruction token (vision_proj_res: +49 k trained).
OPEN_9M = {**CLIP_9M, "vision_cfg": {**CLIP_9M["vision_cfg"], "prior_layers": [1, 1, 1, 1], "prior_width": 16}}
# Closed-domain PriorCLIP-small widened to about the CLIP's trained size: Swin embed 48 (heads 2-16),
# BERT width 256, 4 layers; PAE at 128 (closed-small itself trains 3.3 M parameters).
CLOSED = {"vision_cfg": {"image_size": 128, "backbone_kwargs": {"window_size": 4, "embed_dim": 48, "depths": [1, 1, 2, 1],
                                                                "num_heads": [2, 4, 8, 16]}},
          "text_cfg": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}}

# Tiny models for the script's own test (`--tiny`): seconds per subject.
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TINY_OPEN = {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "prior_layers": [1, 1, 1, 1], "prior_width": 8}}
TINY_CLOSED = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "backbone_kwargs": {
    "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}},
    "text_cfg": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    "pae_cfg": {"filter_size": 4, "heads": 4}}


def _stage(stage, model=None, overrides=None, epochs="all", affiliation=0.0, **extra) -> dict:
    return {"stage": stage, "model": model, "overrides": overrides or {}, "epochs": epochs,
            "affiliation": affiliation, **extra}


def _open_chain(model, overrides, affiliation_1, affiliation_2) -> tuple:
    """Stage 1 contrastive pre-training, stage 2 vision-instruction fine-tuning (prior and text frozen)."""
    return (_stage("pretrain", model, overrides, "stage1", affiliation_1),
            _stage("finetune", epochs="stage2", affiliation=affiliation_2))


SUBJECTS: dict[str, dict] = {
    # -- main rows: 3 seeds each ------------------------------------------------------------
    "open_clip_train": {"name": "open_clip_train (plain CLIP, its own trainer)", "group": "main",
                        "trainer": "open_clip_train", "model": "CLIP"},
    "clip": {"name": "ours: plain CLIP (priorclip-open-baseline)", "group": "main",
             "chain": (_stage("pretrain", "priorclip-open-baseline-small", "CLIP"),)},
    "priorclip_open": {"name": "PriorCLIP open (prior + soft belief, stage 1 + 2, Attribution)", "group": "main",
                       "prior": "open", "chain": _open_chain("priorclip-open-small", "OPEN", 1.0, 1.0)},
    "priorclip_closed": {"name": "PriorCLIP closed (prior + Spatial/Temporal-PAE, hard belief, Attribution)",
                         "group": "main", "prior": "closed",
                         "chain": (_stage("closed", "priorclip-closed-small", "CLOSED", affiliation=1.0),)},
    "closed_baseline": {"name": "closed baseline (same Swin/BERT, no prior, no PAE)", "group": "main",
                        "chain": (_stage("closed", "priorclip-closed-baseline-small", "CLOSED_BASELINE"),)},
    # -- ablations: one seed unless asked ------------------------------------------------------
    "clip_attribution": {"name": "plain CLIP, stage 1 + 2, Attribution (labels without a prior)", "group": "ablation",
                         "chain": _open_chain("priorclip-open-baseline-small", "CLIP", 1.0, 1.0)},
    "open_no_attribution": {"name": "PriorCLIP open, no Attribution loss", "group": "ablation", "prior": "open",
                            "chain": _open_chain("priorclip-open-small", "OPEN", 0.0, 0.0)},
    "open_untrained_prior": {"name": "PriorCLIP open, prior not trained (random, frozen)", "group": "ablation",
                             "prior": "open", "trained_prior": False,
                             "chain": _open_chain("priorclip-open-small", "OPEN", 1.0, 1.0)},
    "open_stage1_only": {"name": "PriorCLIP open, stage 1 only (all pairs), Attribution", "group": "ablation",
                         "prior": "open", "chain": (_stage("pretrain", "priorclip-open-small", "OPEN", affiliation=1.0),)},
    "closed_soft": {"name": "PriorCLIP closed, soft belief", "group": "ablation", "prior": "closed",
                    "chain": (_stage("closed", "priorclip-closed-small", "CLOSED_SOFT", affiliation=1.0),)},
    "closed_no_spatial": {"name": "PriorCLIP closed, no Spatial-PAE (so no prior)", "group": "ablation",
                          "chain": (_stage("closed", "priorclip-closed-small", "CLOSED_NO_SPATIAL", affiliation=1.0),)},
    "closed_no_temporal": {"name": "PriorCLIP closed, no Temporal-PAE", "group": "ablation", "prior": "closed",
                           "chain": (_stage("closed", "priorclip-closed-small", "CLOSED_NO_TEMPORAL", affiliation=1.0),)},
    # Both changes val preferred one at a time (soft belief, no Temporal-PAE), tried together.
    "closed_soft_no_temporal": {"name": "PriorCLIP closed, soft belief, no Temporal-PAE", "group": "ablation",
                                "prior": "closed", "chain": (_stage("closed", "priorclip-closed-small",
                                                                    "CLOSED_SOFT_NO_TEMPORAL", affiliation=1.0),)},
    "closed_no_attribution": {"name": "PriorCLIP closed, no Attribution loss", "group": "ablation", "prior": "closed",
                              "chain": (_stage("closed", "priorclip-closed-small", "CLOSED"),)},
    "closed_baseline_attribution": {"name": "closed baseline + Attribution (labels without a prior)",
                                    "group": "ablation",
                                    "chain": (_stage("closed", "priorclip-closed-baseline-small", "CLOSED_BASELINE",
                                                     affiliation=1.0),)},
}


def model_overrides(name: str, tiny: bool) -> dict:
    """The named override set of a stage (`CLIP`, `OPEN`, `CLOSED`, ...), tiny or real."""
    clip, open_, closed = (TINY_CLIP, TINY_OPEN, TINY_CLOSED) if tiny else (CLIP_9M, OPEN_9M, CLOSED)
    baseline = {k: v for k, v in closed.items() if k != "pae_cfg"}
    table = {"CLIP": clip, "OPEN": open_, "CLOSED": closed, "CLOSED_BASELINE": baseline,
             "CLOSED_SOFT": {**closed, "pae_cfg": {**closed.get("pae_cfg", {}), "belief": "soft"}},
             "CLOSED_NO_SPATIAL": {**closed, "pae_cfg": {**closed.get("pae_cfg", {}), "spatial": False}},
             "CLOSED_NO_TEMPORAL": {**closed, "pae_cfg": {**closed.get("pae_cfg", {}), "temporal": False}},
             "CLOSED_SOFT_NO_TEMPORAL": {**closed, "pae_cfg": {**closed.get("pae_cfg", {}), "belief": "soft",
                                                               "temporal": False}}}
    return copy.deepcopy(table[name])
