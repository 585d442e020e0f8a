"""A QuartzNet-style causal depthwise-separable CNN character CTC recogniser.

Log-mel frames -> normalisation -> pointwise input projection -> `blocks` residual blocks of
(causal depthwise Conv1d over time, pointwise conv, ReLU, per-channel affine) -> linear CTC
head. There is no normalisation layer to carry: the per-channel affine (a LayerScale, started
small so the residual stack trains without BatchNorm) fuses into the neighbouring convolutions.

State is each depthwise conv's left context, the last `kernel - 1` frames of that layer's input,
kept as a 2-D tensor [kernel - 1, channels] (no converter re-lays out 2-D graph I/O). Starting
the buffers at zero is exactly the zero left padding the batch path uses.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.common import NUM_CLASSES, VOCABULARY, FeatureNorm
from pipeline.spec import CtcDecoder, InputSpec, LogMelFrontend, OutputSpec, StateSpec, StreamSpec


class ChannelAffine(nn.Module):
    """y = x * scale + shift per channel (last axis): a folded BatchNorm / LayerScale."""

    def __init__(self, channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), scale))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class StreamingDSCNNCTC(nn.Module):
    def __init__(
        self, n_mels: int = 80, channels: int = 192, blocks: int = 6, kernel: int = 11, residual_scale: float = 0.2
    ) -> None:
        super().__init__()
        self.n_mels, self.channels, self.blocks, self.kernel = n_mels, channels, blocks, kernel
        self.norm = FeatureNorm(n_mels)
        self.input = nn.Linear(n_mels, channels)
        self.depthwise = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, groups=channels, bias=False) for _ in range(blocks)
        )
        self.pointwise = nn.ModuleList(nn.Linear(channels, channels) for _ in range(blocks))
        self.affine = nn.ModuleList(ChannelAffine(channels, residual_scale) for _ in range(blocks))
        self.head = nn.Linear(channels, NUM_CLASSES)

    def streaming_spec(self, chunk_ms: int = 20) -> StreamSpec:
        frames = chunk_ms // 10
        buffer = (self.kernel - 1, self.channels)
        return StreamSpec(
            chunk_ms=chunk_ms,
            frontend=LogMelFrontend(n_mels=self.n_mels),
            inputs=(InputSpec(name="feats", shape=(frames, self.n_mels), time_axis=0),),
            states=tuple(StateSpec(input=f"buf{i}_in", output=f"buf{i}_out", shape=buffer) for i in range(self.blocks)),
            outputs=(OutputSpec(name="logits", shape=(frames, NUM_CLASSES), time_axis=0, kind="ctc_logits"),),
            decoder=CtcDecoder(vocabulary=VOCABULARY),
        )

    def encode(self, feats: torch.Tensor) -> torch.Tensor:
        """Training/batch path: feats [B, T, n_mels] -> logits [B, T, classes]."""
        x = self.input(self.norm(feats))
        for i in range(self.blocks):
            padded = F.pad(x.transpose(1, 2), (self.kernel - 1, 0))  # [B, C, k-1+T], zero left context
            x = x + self._branch(i, self.depthwise[i](padded).transpose(1, 2))
        return self.head(x)

    def forward_batch(self, feats: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.encode(feats[None])[0],)

    def forward(self, feats: torch.Tensor, *buf_in: torch.Tensor):
        """One chunk: feats [T, n_mels], buf_i [kernel-1, channels] -> logits [T, classes], *buf_out."""
        frames = feats.shape[0]
        x = self.input(self.norm(feats))
        buf_out = []
        for i in range(self.blocks):
            window = torch.cat([buf_in[i], x], dim=0)  # [k-1+T, C]
            buf_out.append(window[frames : frames + self.kernel - 1])
            conv = self.depthwise[i](window.t().unsqueeze(0))  # [1, C, T]
            x = x + self._branch(i, conv.squeeze(0).t())
        return (self.head(x), *buf_out)

    def _branch(self, i: int, conv: torch.Tensor) -> torch.Tensor:
        return self.affine[i](torch.relu(self.pointwise[i](conv)))


def build(n_mels: int = 80, channels: int = 192, blocks: int = 6, kernel: int = 11) -> StreamingDSCNNCTC:
    return StreamingDSCNNCTC(n_mels=n_mels, channels=channels, blocks=blocks, kernel=kernel)
