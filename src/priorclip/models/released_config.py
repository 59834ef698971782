"""Translate the released code's configuration keys into PriorCLIP model configs.

The PIR code configures its heads with flat keys (`embed_dim`, `head`, `instru_num`, `cycle_num`,
`filter_size`, `dropout_r`, `temp1`, `temp2`); the PriorCLIP open_clip fork adds `res_layers` and
`res_width` to open_clip's vision config. The conformance fixtures use the same keys.
"""
from __future__ import annotations

# The released Spatial-PAE scores the first 50 vision tokens (Swin-T at 224 px: 1 + 7x7).
RELEASED_BELIEF_TOKENS = 50


def closed_config_from_released(cfg: dict, baseline: bool = False) -> dict:
    """Heads-only closed-domain config (backbone widths given, backbones not built)."""
    out = {
        "architecture": "closed-baseline" if baseline else "closed",
        "name": "released-closed",
        "embed_dim": cfg["embed_dim"],
        "vision_cfg": {"width": cfg["vision_width"]},
        "text_cfg": {"hidden_size": cfg["text_width"], "vocab_size": None},
        "temperature": cfg.get("temp1", 0.07),
    }
    if not baseline:
        out["prior_cfg"] = {"width": cfg["conv_width"]}
        out["pae_cfg"] = {
            "heads": cfg["head"], "instru_num": cfg["instru_num"], "cycle_num": cfg["cycle_num"],
            "filter_size": cfg["filter_size"], "dropout": cfg.get("dropout_r", 0.0), "belief": "hard",
            "soft_weighting": "released", "belief_tokens": cfg.get("belief_tokens", RELEASED_BELIEF_TOKENS),
        }
        out["temperature_affiliation"] = cfg.get("temp2", 0.07)
    return out


def open_config_from_released(cfg: dict) -> dict:
    """Open-domain config from the PriorCLIP fork's open_clip-style config (res_* prior keys)."""
    vision = dict(cfg["vision_cfg"])
    vision.pop("output_tokens", None)
    if "res_layers" in vision:
        vision["prior_layers"] = vision.pop("res_layers")
    if "res_width" in vision:
        vision["prior_width"] = vision.pop("res_width")
    vision.setdefault("soft_weighting", "released")
    return {"architecture": "open", "name": "released-open", "embed_dim": cfg["embed_dim"],
            "vision_cfg": vision, "text_cfg": dict(cfg["text_cfg"])}
