"""One streaming loop for every backend, driven by the artifact's contract.

A session owns its state: every call feeds back the session's own previous state outputs,
never a reference's. Values cross the session boundary in the contract's layout and float32;
the session converts to and from each tensor's binding (permutation, dtype, quantization).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.contract import Binding, Contract, read_contract


def to_binding(value: np.ndarray, binding: Binding) -> np.ndarray:
    if binding.permutation is not None:
        value = np.transpose(value, binding.permutation)
    if binding.quantization is not None:
        q = binding.quantization
        info = np.iinfo(q.dtype)
        value = np.clip(np.round(value / q.scale) + q.zero_point, info.min, info.max)
        return value.astype(q.dtype)
    return np.ascontiguousarray(value, dtype=binding.dtype)


def from_binding(value: np.ndarray, binding: Binding) -> np.ndarray:
    if binding.quantization is not None:
        q = binding.quantization
        value = (value.astype(np.float32) - q.zero_point) * np.float32(q.scale)
    value = np.asarray(value, dtype=np.float32)
    if binding.permutation is not None:
        value = np.transpose(value, np.argsort(binding.permutation))
    return value


class StreamingSession:
    """reset() then step(chunk) per chunk; subclasses implement `_invoke` on artifact-named tensors."""

    def __init__(self, artifact_dir: Path, threads: int = 1) -> None:
        self.artifact_dir = Path(artifact_dir)
        self.contract: Contract = read_contract(self.artifact_dir)
        self.stream = self.contract.stream
        self.threads = threads
        self.reset()

    def reset(self) -> None:
        self.state = {s.input: np.full(s.shape, s.init, dtype=np.float32) for s in self.stream.states}

    def advance(self, chunk: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """One closed-loop call: the feeds it used (chunk and the session's own state) and every output, states included."""
        feeds = {**chunk, **self.state}
        results = self.call(feeds)
        for s in self.stream.states:
            self.state[s.input] = results[s.output]
        return feeds, results

    def step(self, chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one chunk from the session's own state; returns the non-state outputs."""
        _, results = self.advance(chunk)
        return {o.name: results[o.name] for o in self.stream.outputs}

    def call(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One stateless call on explicit inputs (chunk and state), contract names in and out."""
        bindings = self.contract.bindings
        artifact_feeds = {bindings[name].name: to_binding(value, bindings[name]) for name, value in feeds.items()}
        raw = self._invoke(artifact_feeds)
        return {name: from_binding(raw[bindings[name].name], bindings[name]) for name in self.stream.output_names}

    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError
