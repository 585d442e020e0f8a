"""The article's StreamingLSTM grown into a character CTC recogniser.

Log-mel frames -> normalisation -> stacked LSTM (explicit gates when streaming) -> linear CTC
head. State is each layer's `h` and `c`, kept as 2-D tensors [layers, hidden] so that no
converter re-lays them out (onnx2tf turns 3-D/4-D graph I/O channels-last).
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import NUM_CLASSES, VOCABULARY, FeatureNorm
from pipeline.spec import CtcDecoder, InputSpec, LogMelFrontend, OutputSpec, StateSpec, StreamSpec


class StreamingLSTMCTC(nn.Module):
    def __init__(self, n_mels: int = 80, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.n_mels, self.hidden, self.layers = n_mels, hidden, layers
        self.norm = FeatureNorm(n_mels)
        self.lstm = nn.LSTM(n_mels, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def streaming_spec(self, chunk_ms: int = 20) -> StreamSpec:
        frames = chunk_ms // 10
        state = (self.layers, self.hidden)
        return StreamSpec(
            chunk_ms=chunk_ms,
            frontend=LogMelFrontend(n_mels=self.n_mels),
            inputs=(InputSpec(name="feats", shape=(frames, self.n_mels), time_axis=0),),
            states=(
                StateSpec(input="h_in", output="h_out", shape=state),
                StateSpec(input="c_in", output="c_out", shape=state),
            ),
            outputs=(OutputSpec(name="logits", shape=(frames, NUM_CLASSES), time_axis=0, kind="ctc_logits"),),
            decoder=CtcDecoder(vocabulary=VOCABULARY),
        )

    def encode(self, feats: torch.Tensor) -> torch.Tensor:
        """Training/batch path: feats [B, T, n_mels] -> logits [B, T, classes]."""
        hidden, _ = self.lstm(self.norm(feats))
        return self.head(hidden)

    def forward_batch(self, feats: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.encode(feats[None])[0],)

    def forward(self, feats: torch.Tensor, h_in: torch.Tensor, c_in: torch.Tensor):
        """One chunk: feats [T, n_mels], h/c [layers, hidden] -> logits [T, classes], h_out, c_out."""
        x = self.norm(feats)
        h = [h_in[i : i + 1] for i in range(self.layers)]
        c = [c_in[i : i + 1] for i in range(self.layers)]
        steps = []
        for t in range(feats.shape[0]):
            layer_in = x[t : t + 1]
            for i in range(self.layers):
                h[i], c[i] = self._cell(i, layer_in, h[i], c[i])
                layer_in = h[i]
            steps.append(layer_in)
        logits = self.head(torch.cat(steps, dim=0))
        return logits, torch.cat(h, dim=0), torch.cat(c, dim=0)

    def _cell(self, layer: int, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        # nn.LSTM's gate order is input, forget, cell, output; static slices keep it exportable.
        w_ih = getattr(self.lstm, f"weight_ih_l{layer}")
        w_hh = getattr(self.lstm, f"weight_hh_l{layer}")
        bias = getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")
        gates = x @ w_ih.t() + h @ w_hh.t() + bias
        n = self.hidden
        i = torch.sigmoid(gates[:, 0:n])
        f = torch.sigmoid(gates[:, n : 2 * n])
        g = torch.tanh(gates[:, 2 * n : 3 * n])
        o = torch.sigmoid(gates[:, 3 * n : 4 * n])
        c_new = f * c + i * g
        return o * torch.tanh(c_new), c_new


def build(n_mels: int = 80, hidden: int = 256, layers: int = 2) -> StreamingLSTMCTC:
    return StreamingLSTMCTC(n_mels=n_mels, hidden=hidden, layers=layers)
