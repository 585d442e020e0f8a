"""A character recognizer as people write one: nn.LSTM, batch first, [batch, time, features]."""

import torch
from torch import nn


class LstmRecognizer(nn.Module):
    def __init__(self, n_mels: int = 80, hidden: int = 96, layers: int = 2, classes: int = 28) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, num_layers=layers, batch_first=True)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, feats: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        # feats [1, T, 80] log-mel; h, c [layers, 1, hidden]
        y, (h, c) = self.lstm((feats + 6.0) / 4.0, (h, c))
        return self.classifier(y), h, c


def build() -> LstmRecognizer:
    return LstmRecognizer()
