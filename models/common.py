"""What the zoo models share: the character set and the feature normaliser."""

from __future__ import annotations

import torch
from torch import nn

# CTC class 0 is the blank; class k > 0 is VOCABULARY[k - 1].
VOCABULARY = " 'abcdefghijklmnopqrstuvwxyz"
NUM_CLASSES = len(VOCABULARY) + 1


class FeatureNorm(nn.Module):
    """Fixed per-bin mean/std normalisation; the statistics are set from training data."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("inv_std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std
