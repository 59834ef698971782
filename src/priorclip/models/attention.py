"""Attention blocks of the Progressive Attention Encoders (PAE).

These follow the released PIR code (an MCAN-style multi-head attention with separate q/k/v/merge
projections, post-norm residual blocks), with its parameter names (`mhatt`/`mhatt_cross`,
`linear_q/k/v/merge`, `ffn.0/1/3`, `norm1/2`) so released weights load without renaming.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class MultiHeadAttention(nn.Module):
    """attention(v, k, q) = merge(concat_h softmax(q_h k_h^T / sqrt(d)) v_h).

    The argument order (v, k, q) is the released code's; keep it to avoid silent q/k swaps.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by heads={heads}")
        self.heads = heads
        self.head_dim = width // heads
        self.linear_v = nn.Linear(width, width)
        self.linear_k = nn.Linear(width, width)
        self.linear_q = nn.Linear(width, width)
        self.linear_merge = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, v: torch.Tensor, k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        b, n_q, width = q.shape
        v, k, q = self._split(self.linear_v(v)), self._split(self.linear_k(k)), self._split(self.linear_q(q))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        attn = self.dropout(scores.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b, n_q, width)
        return self.linear_merge(out)


def feed_forward(width: int) -> nn.Sequential:
    """Linear(E, 2E) -> LayerNorm(2E) -> GELU -> Linear(2E, E); indices 0/1/3 as released."""
    return nn.Sequential(nn.Linear(width, 2 * width), nn.LayerNorm(2 * width), nn.GELU(), nn.Linear(2 * width, width))


class SelfAttentionBlock(nn.Module):
    """SA(x): x <- norm1(x + att(x, x, x)); x <- norm2(x + ffn(x))."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.mhatt = MultiHeadAttention(width, heads, dropout)
        self.ffn = feed_forward(width)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(width)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout1(self.mhatt(x, x, x)))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class CrossAttentionBlock(nn.Module):
    """CA(x, y): y <- norm1(y + att(v=y, k=y, q=x)); y <- norm2(y + ffn(y)); returns y.

    The query comes from the guide `x` (the instruction or the mapped text state) while keys,
    values and the residual stream are `y`, so `x` and `y` must have the same length.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.mhatt_cross = MultiHeadAttention(width, heads, dropout)
        self.ffn = feed_forward(width)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(width)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = self.norm1(y + self.dropout1(self.mhatt_cross(y, y, x)))
        return self.norm2(y + self.dropout2(self.ffn(y)))
