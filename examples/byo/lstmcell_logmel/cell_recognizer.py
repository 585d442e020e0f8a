"""A recognizer stepping an nn.LSTMCell over the frames of each chunk, with log-softmax outputs."""

import torch
from torch import nn


class CellRecognizer(nn.Module):
    def __init__(self, n_mels: int = 80, hidden: int = 128, classes: int = 29) -> None:
        super().__init__()
        self.frontend = nn.Sequential(nn.Linear(n_mels, hidden), nn.ReLU())
        self.cell = nn.LSTMCell(hidden, hidden)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, feats: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        # feats [1, T, 80]; h, c [1, hidden]
        x = self.frontend((feats + 6.0) / 4.0)
        outputs = []
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
            outputs.append(self.classifier(h))
        return torch.log_softmax(torch.stack(outputs, dim=1), dim=-1), h, c


def build() -> CellRecognizer:
    return CellRecognizer()
