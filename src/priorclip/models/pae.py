"""Progressive Attention Encoders (paper Sec. 3.2): Spatial-PAE for images, Temporal-PAE for text.

Both take backbone tokens already projected to the joint width E and return an L2-normalised
embedding `normalize(g + head(state[:, 0]))`, where g is the projected global token: the PAE adds a
refinement to the backbone's own global feature rather than replacing it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttentionBlock, SelfAttentionBlock
from .belief import belief_scores, hard_belief, soft_belief


class SpatialPAE(nn.Module):
    """Filter visual tokens by their belief w.r.t. the instruction, then refine them progressively.

    For i < instru_num: A = SA_i(F); F = CA_i(x = mapping_i(instruction broadcast), y = A).
    Parameter names (`img_sa`, `img_ca`, `mapping_img`, `head_img`) are the released ones.
    """

    def __init__(self, width: int, heads: int, instru_num: int, filter_size: int, dropout: float = 0.0,
                 belief: str = "hard", soft_weighting: str = "released", belief_tokens: int | None = None):
        super().__init__()
        if belief not in ("hard", "soft"):
            raise ValueError(f"belief must be 'hard' or 'soft', got {belief!r}")
        self.belief, self.soft_weighting = belief, soft_weighting
        self.filter_size, self.belief_tokens = filter_size, belief_tokens
        self.img_sa = nn.ModuleList(SelfAttentionBlock(width, heads, dropout) for _ in range(instru_num))
        self.img_ca = nn.ModuleList(CrossAttentionBlock(width, heads, dropout) for _ in range(instru_num))
        self.mapping_img = nn.ModuleList(nn.Linear(width, width) for _ in range(instru_num))
        self.head_img = nn.Linear(width, width)

    def select(self, tokens: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """The belief step alone: (B, T, E) tokens, (B, E) instruction -> the tokens the PAE sees."""
        scored = tokens if self.belief_tokens is None else tokens[:, : self.belief_tokens]
        belief = belief_scores(scored, instruction)
        if self.belief == "hard":
            return hard_belief(tokens, belief, self.filter_size)
        return soft_belief(scored, belief, self.soft_weighting)

    def forward(self, tokens: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        global_token = tokens[:, 0]
        state = self.select(tokens, instruction)
        guide = instruction.unsqueeze(1).expand(-1, state.shape[1], -1)
        for sa, ca, mapping in zip(self.img_sa, self.img_ca, self.mapping_img):
            state = ca(mapping(guide), sa(state))
        return F.normalize(global_token + self.head_img(state[:, 0]), dim=-1)


class TemporalPAE(nn.Module):
    """Cyclic self/cross attention over text tokens: the state guides its own next step.

    For i < cycle_num: A = SA_i(X); X = CA_i(x = mapping_i(X), y = A). Released names
    `txt_sa`, `txt_ca`, `mapping_txt`, `head_txt`.
    """

    def __init__(self, width: int, heads: int, cycle_num: int, dropout: float = 0.0):
        super().__init__()
        self.txt_sa = nn.ModuleList(SelfAttentionBlock(width, heads, dropout) for _ in range(cycle_num))
        self.txt_ca = nn.ModuleList(CrossAttentionBlock(width, heads, dropout) for _ in range(cycle_num))
        self.mapping_txt = nn.ModuleList(nn.Linear(width, width) for _ in range(cycle_num))
        self.head_txt = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        global_token, state = tokens[:, 0], tokens
        for sa, ca, mapping in zip(self.txt_sa, self.txt_ca, self.mapping_txt):
            state = ca(mapping(state), sa(state))
        return F.normalize(global_token + self.head_txt(state[:, 0]), dim=-1)
