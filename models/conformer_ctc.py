"""A small streaming Conformer character CTC recogniser.

Log-mel frames -> normalisation -> x2 subsampling by stacking frame pairs (a static reshape,
so no state) and a linear projection -> `blocks` Conformer blocks (half FFN, causal
self-attention over a limited left context with a learned relative-position bias, convolution
module with a causal depthwise conv, half FFN, LayerNorm) -> linear CTC head at 20 ms per output.

Attention is causal frame by frame: output frame t sees frames t - context .. t and nothing
later, so the result does not depend on how the stream is chunked (20 ms = 1 output frame,
40 ms = 2). The batch path applies the same band mask to the whole utterance.

State, all 2-D:
- `kv{i}_in` [context, 2 * d_model]: block i's keys and values of the last `context` frames;
- `conv{i}_in` [kernel - 1, d_model]: block i's depthwise conv input of the last frames;
- `valid_in` [1, context]: 1.0 where the key/value cache holds a real frame, 0.0 before the
  stream has filled it; it becomes an additive mask, so the zero-initialised cache is never
  attended to, exactly like the frames before t = 0 that the batch path does not have.

The additive mask is MASKED = -50, not -1e4: the scores plus mask feed the softmax, and an int8
file calibrates one range for that tensor. With -1e4 in it the range is ~10,000 wide, one int8
step (~40) swallows every real score (visible scores span about -17 .. +20 on real speech), the
attention turns uniform and the int8 CER rose by 8 points. -50 still underflows exp() to exactly
0 in float32 next to those scores (logits unchanged), and the streaming mask is built so that
each entry is 0 or MASKED, never a sum of two masks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.common import NUM_CLASSES, VOCABULARY, FeatureNorm
from pipeline.spec import CtcDecoder, InputSpec, LogMelFrontend, OutputSpec, StateSpec, StreamSpec

MASKED = -50.0  # additive score for keys a query may not see: exp underflows to exactly 0, and int8 keeps a usable step
MAX_CHUNK_FRAMES = 50  # longest streaming chunk, in output frames (1 s)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _band(queries: int, keys: int, offset: int, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask and relative-distance index for queries at key positions offset .. offset+queries-1.

    Query j sits at key position offset + j and may see keys k with 0 <= offset + j - k <= context.
    Returns (additive mask [queries, keys] float32, distance clipped to [0, context] int64).
    """
    distance = offset + np.arange(queries)[:, None] - np.arange(keys)[None, :]
    mask = np.where((distance >= 0) & (distance <= context), 0.0, MASKED).astype(np.float32)
    return mask, np.clip(distance, 0, context).astype(np.int64)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, hidden)
        self.down = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(_swish(self.up(self.norm(x))))


class ConformerBlock(nn.Module):
    def __init__(self, d_model: int, heads: int, ff_hidden: int, kernel: int, context: int) -> None:
        super().__init__()
        self.d_model, self.heads, self.kernel, self.context = d_model, heads, kernel, context
        self.ff1 = FeedForward(d_model, ff_hidden)
        self.attn_norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_out = nn.Linear(d_model, d_model)
        self.rel_bias = nn.Parameter(torch.zeros(heads, context + 1))
        self.conv_norm = nn.LayerNorm(d_model)
        self.conv_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, groups=d_model)
        self.conv_mid_norm = nn.LayerNorm(d_model)  # per-frame, so streaming-safe (BatchNorm's place)
        self.conv_out = nn.Linear(d_model, d_model)
        self.ff2 = FeedForward(d_model, ff_hidden)
        self.final_norm = nn.LayerNorm(d_model)

    # --- attention -------------------------------------------------------------------------
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., T, d] -> [..., heads, T, d/heads]."""
        shape = x.shape[:-1] + (self.heads, self.d_model // self.heads)
        return x.reshape(shape).transpose(-3, -2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, index: torch.Tensor):
        """q [..., Tq, d], k/v [..., Tk, d], mask broadcastable to [..., H, Tq, Tk], index [Tq, Tk]."""
        scale = (self.d_model // self.heads) ** -0.5
        bias = torch.index_select(self.rel_bias, 1, index.reshape(-1)).reshape(self.heads, *index.shape)
        scores = (self._heads(q) * scale) @ self._heads(k).transpose(-1, -2) + bias + mask
        out = torch.softmax(scores, dim=-1) @ self._heads(v)  # [..., H, Tq, dh]
        out = out.transpose(-3, -2)
        return self.attn_out(out.reshape(out.shape[:-2] + (self.d_model,)))

    def _glu(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_in(self.conv_norm(x))
        return y[..., : self.d_model] * torch.sigmoid(y[..., self.d_model :])

    def _conv_tail(self, conv: torch.Tensor) -> torch.Tensor:
        return self.conv_out(_swish(self.conv_mid_norm(conv)))

    # --- batch: x [B, T, d] -----------------------------------------------------------------
    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        d, frames = self.d_model, x.shape[1]
        x = x + 0.5 * self.ff1(x)
        qkv = self.qkv(self.attn_norm(x))
        mask, index = _band(frames, frames, 0, self.context)
        x = x + self._attend(
            qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :], torch.from_numpy(mask).to(x.dtype), torch.from_numpy(index)
        )
        padded = F.pad(self._glu(x).transpose(1, 2), (self.kernel - 1, 0))
        x = x + self._conv_tail(self.depthwise(padded).transpose(1, 2))
        x = x + 0.5 * self.ff2(x)
        return self.final_norm(x)

    # --- streaming: x [T, d] ----------------------------------------------------------------
    def forward_chunk(self, x: torch.Tensor, kv_in: torch.Tensor, conv_in: torch.Tensor, chunk_mask: torch.Tensor, index: torch.Tensor):
        """chunk_mask [T, context + T]: band mask plus unfilled cache slots; index [T, context + T]."""
        d, frames = self.d_model, x.shape[0]
        x = x + 0.5 * self.ff1(x)
        qkv = self.qkv(self.attn_norm(x))
        kv = torch.cat([kv_in, qkv[:, d:]], dim=0)  # [context + T, 2d]
        kv_out = kv[frames : frames + self.context]
        x = x + self._attend(qkv[:, :d], kv[:, :d], kv[:, d:], chunk_mask, index)
        window = torch.cat([conv_in, self._glu(x)], dim=0)  # [kernel - 1 + T, d]
        conv_out = window[frames : frames + self.kernel - 1]
        conv = self.depthwise(window.t().unsqueeze(0)).squeeze(0).t()
        x = x + self._conv_tail(conv)
        x = x + 0.5 * self.ff2(x)
        return self.final_norm(x), kv_out, conv_out


class StreamingConformerCTC(nn.Module):
    def __init__(
        self,
        n_mels: int = 80,
        d_model: int = 128,
        heads: int = 4,
        blocks: int = 3,
        ff_hidden: int = 256,
        kernel: int = 15,
        context: int = 32,
    ) -> None:
        super().__init__()
        assert d_model % heads == 0
        self.n_mels, self.d_model, self.blocks, self.kernel, self.context = n_mels, d_model, blocks, kernel, context
        self.subsample = 2
        self.norm = FeatureNorm(n_mels)
        self.input = nn.Linear(self.subsample * n_mels, d_model)
        self.layers = nn.ModuleList(ConformerBlock(d_model, heads, ff_hidden, kernel, context) for _ in range(blocks))
        self.head = nn.Linear(d_model, NUM_CLASSES)
        # Streaming constants for chunks of up to MAX_CHUNK_FRAMES output frames; a chunk of T
        # frames uses the static top-left slice [:T, :context + T] (the band does not depend on T).
        band, index = _band(MAX_CHUNK_FRAMES, context + MAX_CHUNK_FRAMES, context, context)
        self.register_buffer("stream_keep", torch.from_numpy((band == 0).astype(np.float32)), persistent=False)
        self.register_buffer("stream_index", torch.from_numpy(index), persistent=False)
        self.register_buffer("stream_ones", torch.ones(1, MAX_CHUNK_FRAMES), persistent=False)

    def streaming_spec(self, chunk_ms: int = 20) -> StreamSpec:
        frames = chunk_ms // 10
        if frames % self.subsample or not 0 < frames // self.subsample <= MAX_CHUNK_FRAMES:
            raise ValueError(
                f"chunk_ms must be a multiple of {10 * self.subsample} ms up to {10 * self.subsample * MAX_CHUNK_FRAMES}, got {chunk_ms}"
            )
        states = []
        for i in range(self.blocks):
            states.append(StateSpec(input=f"kv{i}_in", output=f"kv{i}_out", shape=(self.context, 2 * self.d_model)))
            states.append(StateSpec(input=f"conv{i}_in", output=f"conv{i}_out", shape=(self.kernel - 1, self.d_model)))
        states.append(StateSpec(input="valid_in", output="valid_out", shape=(1, self.context)))
        return StreamSpec(
            chunk_ms=chunk_ms,
            frontend=LogMelFrontend(n_mels=self.n_mels),
            inputs=(InputSpec(name="feats", shape=(frames, self.n_mels), time_axis=0),),
            states=tuple(states),
            outputs=(
                OutputSpec(name="logits", shape=(frames // self.subsample, NUM_CLASSES), time_axis=0, kind="ctc_logits"),
            ),
            decoder=CtcDecoder(vocabulary=VOCABULARY),
        )

    def encode(self, feats: torch.Tensor) -> torch.Tensor:
        """Training/batch path: feats [B, T, n_mels] -> logits [B, T // 2, classes]."""
        frames = feats.shape[1] // self.subsample
        x = self.norm(feats[:, : frames * self.subsample])
        x = self.input(x.reshape(feats.shape[0], frames, self.subsample * self.n_mels))
        for layer in self.layers:
            x = layer.forward_batch(x)
        return self.head(x)

    def forward_batch(self, feats: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.encode(feats[None])[0],)

    def forward(self, feats: torch.Tensor, *state_in: torch.Tensor):
        """One chunk: feats [T, n_mels] (T even), then per block kv_i, conv_i, then valid
        -> logits [T // 2, classes], then the same states updated."""
        frames = feats.shape[0] // self.subsample
        x = self.input(self.norm(feats).reshape(frames, self.subsample * self.n_mels))
        valid = torch.cat([state_in[-1], self.stream_ones[:, :frames]], dim=1)  # [1, context + T]
        # 0 where a key may be seen, MASKED outside the causal band or on unfilled cache slots (never 2 x MASKED)
        chunk_mask = (self.stream_keep[:frames, : self.context + frames] * valid - 1.0) * -MASKED
        index = self.stream_index[:frames, : self.context + frames]
        state_out = []
        for i, layer in enumerate(self.layers):
            x, kv_out, conv_out = layer.forward_chunk(x, state_in[2 * i], state_in[2 * i + 1], chunk_mask, index)
            state_out += [kv_out, conv_out]
        state_out.append(valid[:, frames : frames + self.context])
        return (self.head(x), *state_out)


def build(
    n_mels: int = 80, d_model: int = 128, heads: int = 4, blocks: int = 3, ff_hidden: int = 256, kernel: int = 15, context: int = 32
) -> StreamingConformerCTC:
    return StreamingConformerCTC(
        n_mels=n_mels, d_model=d_model, heads=heads, blocks=blocks, ff_hidden=ff_hidden, kernel=kernel, context=context
    )
