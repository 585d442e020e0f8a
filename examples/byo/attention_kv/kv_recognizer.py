"""One attention block over a sliding key/value cache ([batch, time, dim]), as streaming Transformers carry it."""

import torch
from torch import nn


class KvRecognizer(nn.Module):
    def __init__(self, n_mels: int = 80, dim: int = 64, heads: int = 4, cache: int = 16, classes: int = 28) -> None:
        super().__init__()
        self.heads, self.cache = heads, cache
        self.embed = nn.Linear(n_mels, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))
        self.classifier = nn.Linear(dim, classes)

    def forward(self, feats: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor):
        # feats [1, T, 80]; k_cache, v_cache [1, cache, dim]: the keys and values of the last `cache` frames
        x = self.embed((feats + 6.0) / 4.0)
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        keys, values = torch.cat([k_cache, k], dim=1), torch.cat([v_cache, v], dim=1)
        b, t, d = q.shape
        split = lambda z: z.reshape(b, z.shape[1], self.heads, d // self.heads).transpose(1, 2)
        attended = torch.softmax(split(q) @ split(keys).transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1) @ split(values)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        x = x + self.ff(x)
        return self.classifier(x), keys[:, -self.cache:], values[:, -self.cache:]


def build() -> KvRecognizer:
    return KvRecognizer()
