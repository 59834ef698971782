"""Belief between a visual prior (instruction) and visual tokens: the core idea of PriorCLIP.

The belief of token t is softmax_t(<x_t, prior>) (paper Sec. 3, "belief matrix"). Two ways use it:

* hard belief (closed domain, Spatial-PAE): keep the `filter_size` tokens of highest belief, in
  descending belief order, and drop the rest;
* soft belief (open domain, and an option in the closed domain): keep every token, weighted by its
  belief and by a rank weight 1/sqrt(rank + 1).

For the soft belief the released code and the paper differ; both are available:

* ``"released"``: what the authors' code computes. The rank weights are indexed by *position*
  (token t gets 1/sqrt(order[t] + 1) where order[t] is the index of the token ranked t-th), and
  the result is L2-normalised along the token axis (F.normalize's default dim=1 on a
  (batch, tokens, width) tensor). Official checkpoints were trained with it, so loading one needs
  it.
* ``"rank"``: our reading of the paper (its text does not spell out the indexing or the axis):
  each token is weighted by 1/sqrt(its own rank + 1) and each token is L2-normalised over its
  channels.

Source of ``"released"``: ../shared/conformance/README.md ("open_small", step 4), computed by the
authors' released code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SOFT_WEIGHTINGS = ("released", "rank")


def belief_scores(tokens: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """softmax over tokens of <x_t, prior>.  tokens (B, T, C), prior (B, C) or (B, 1, C) -> (B, T)."""
    if prior.dim() == 3:
        prior = prior[:, 0]
    return torch.einsum("btc,bc->bt", tokens, prior).softmax(dim=-1)


def hard_belief(tokens: torch.Tensor, belief: torch.Tensor, filter_size: int) -> torch.Tensor:
    """Keep the `filter_size` highest-belief tokens in descending belief order.

    `belief` may cover only the first T' <= T tokens (the released code scores the first 50).
    Equal beliefs keep their token order (stable sort), so the result is deterministic.
    """
    n = belief.shape[1]
    if not 0 < filter_size <= n:
        raise ValueError(f"filter_size={filter_size} must be between 1 and the number of scored tokens ({n})")
    order = torch.sort(belief, dim=1, descending=True, stable=True).indices[:, :filter_size]
    return torch.gather(tokens, 1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def rank_weights(belief: torch.Tensor, weighting: str = "released") -> torch.Tensor:
    """Per-token rank weights (B, T); see the module docstring for the two settings."""
    order = torch.sort(belief, dim=1, descending=True, stable=True).indices  # order[t] = token ranked t-th
    if weighting == "released":
        return (order.to(belief.dtype) + 1.0).rsqrt()
    if weighting == "rank":
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
        return (rank.to(belief.dtype) + 1.0).rsqrt()
    raise ValueError(f"unknown soft-belief weighting {weighting!r}; choose one of {SOFT_WEIGHTINGS}")


def soft_belief(tokens: torch.Tensor, belief: torch.Tensor, weighting: str = "released") -> torch.Tensor:
    """x <- normalize(x * b + x * w): every token kept, weighted by belief and rank."""
    weighted = tokens * belief.unsqueeze(-1) + tokens * rank_weights(belief, weighting).unsqueeze(-1)
    dim = 1 if weighting == "released" else -1
    return F.normalize(weighted, dim=dim)
