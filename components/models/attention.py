"""Attention blocks that keep the shape of a feature map: squeeze-and-excitation and spatial multi-head attention."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcitation(nn.Module):
    """Channel attention of Hu et al. (2018): ``x * sigmoid(W2 relu(W1 avgpool(x)))``.

    Args:
        channels: channels of the feature map.
        reduction: bottleneck ratio (16 in the paper and the study); the hidden width is at least 1.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be >= 1, got {channels} and {reduction}")
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return x * scale


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions of a feature map, added back residually.

    Each position is a token of ``channels`` features; ``out = x + MHA(tokens, tokens, tokens)`` reshaped to
    ``(B, C, H, W)``.

    Args:
        channels: channels of the feature map (must be divisible by ``heads``).
        heads: attention heads (4 in the study).
        dropout: dropout on the attention weights (0.1 in the study).
    """

    def __init__(self, channels: int, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.attention = nn.MultiheadAttention(channels, heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return x + attended.transpose(1, 2).reshape(batch, channels, height, width)
