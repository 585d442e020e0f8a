"""A voice-activity model as such models are written: raw PCM in 512-sample chunks, the last 64 samples of the
previous chunk carried as context, a learned framing conv, an nn.LSTMCell, and a sigmoid speech probability."""

import torch
from torch import nn


class LstmCellVad(nn.Module):
    def __init__(self, context: int = 64, filters: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.context = context
        self.framing = nn.Conv1d(1, filters, kernel_size=128, stride=64, bias=False)
        self.cell = nn.LSTMCell(filters, hidden)
        self.head = nn.Linear(hidden, 1)
        self.energy_weight = nn.Parameter(torch.tensor(1.5))
        self.energy_bias = nn.Parameter(torch.tensor(6.0))

    def forward(self, pcm: torch.Tensor, context: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        # pcm [1, 512] in [-1, 1]; context [1, 64]; h, c [1, hidden]
        window = torch.cat([context, pcm], dim=1)
        frames = self.framing(window.unsqueeze(1))  # [1, filters, 8]
        energy = torch.log(frames.abs().mean(dim=2) + 1e-4)  # [1, filters]
        h, c = self.cell(energy, (h, c))
        logit = self.head(h) + self.energy_weight * (energy.mean(dim=1, keepdim=True) + self.energy_bias)
        return torch.sigmoid(logit), window[:, -self.context:], h, c


def build() -> LstmCellVad:
    return LstmCellVad()
