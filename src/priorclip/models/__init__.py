"""The PriorCLIP model library: closed- and open-domain models, losses, tokenizers, checkpoints.

    import priorclip.models as pm
    model = pm.create_model("priorclip-closed-small")
    image_emb = model.encode_image(images); text_emb = model.encode_text(model.tokenize(["a runway"]))

This package imports nothing from training, evaluation or search.
"""
from .belief import belief_scores, hard_belief, rank_weights, soft_belief
from .checkpoints import (export_open_clip_state_dict, load_checkpoint, load_model, load_official_checkpoint,
                          read_state_dict, save_checkpoint)
from .closed_domain import ClosedDualEncoder, ClosedPriorCLIP
from .factory import add_model_config, build_model, create_model, get_model_config, list_models
from .inference import inference_optimizations
from .losses import PriorCLIPLoss, affiliation_loss, contrastive_loss, triplet_loss
from .open_domain import OpenCLIPBaseline, OpenPriorCLIP
from .preprocess import apply_preprocess
from .released_config import closed_config_from_released, open_config_from_released
from .tokenizers import ClipTokenizer, WordPieceTokenizer, clean_caption, train_wordpiece

__all__ = [
    "ClipTokenizer", "ClosedDualEncoder", "ClosedPriorCLIP", "OpenCLIPBaseline", "OpenPriorCLIP", "PriorCLIPLoss",
    "WordPieceTokenizer", "add_model_config", "apply_preprocess", "clean_caption", "closed_config_from_released", "open_config_from_released", "affiliation_loss", "belief_scores", "build_model", "contrastive_loss",
    "create_model", "export_open_clip_state_dict", "get_model_config", "hard_belief", "inference_optimizations", "list_models",
    "load_checkpoint", "load_model", "load_official_checkpoint", "rank_weights", "read_state_dict", "save_checkpoint",
    "soft_belief", "train_wordpiece", "triplet_loss",
]
