"""A causal convolution stack over [batch, channels, time]; each layer's left padding is carried as state."""

import torch
from torch import nn


class CausalConvRecognizer(nn.Module):
    def __init__(self, n_mels: int = 80, channels: int = 64, kernel: int = 5, layers: int = 3, classes: int = 28) -> None:
        super().__init__()
        self.kernel = kernel
        self.inp = nn.Conv1d(n_mels, channels, 1)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel) for _ in range(layers))
        self.out = nn.Conv1d(channels, classes, 1)

    def forward(self, feats: torch.Tensor, pad0: torch.Tensor, pad1: torch.Tensor, pad2: torch.Tensor):
        # feats [1, 80, T]; pad_k [1, channels, kernel - 1]: the previous chunk's last frames of layer k's input
        x = self.inp((feats + 6.0) / 4.0)
        new_pads = []
        for conv, pad in zip(self.convs, (pad0, pad1, pad2)):
            window = torch.cat([pad, x], dim=2)
            new_pads.append(window[:, :, -(self.kernel - 1):])
            x = torch.relu(conv(window)) + x
        return self.out(x).transpose(1, 2), *new_pads  # logits [1, T, classes]


def build() -> CausalConvRecognizer:
    return CausalConvRecognizer()
