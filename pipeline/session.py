"""One streaming loop for every backend, driven by the artifact's contract.

Every backend's runtime is a `StreamingSession`; `stream()` is the one closed loop that the
reference, calibration and verification all run.

A session owns its state: every call feeds back the session's own previous state outputs,
never a reference's. Values cross the session boundary in the contract's layout and float32;
the session converts to and from each tensor's binding (permutation, dtype, quantization).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
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
        self.spec = self.contract.stream
        self.threads = threads
        self.reset()

    def reset(self) -> None:
        self.state = {s.input: np.full(s.shape, s.init, dtype=np.float32) for s in self.spec.states}

    def advance(self, chunk: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """One closed-loop call: the feeds it used (chunk and the session's own state) and every output, states included."""
        feeds = {**chunk, **self.state}
        results = self.call(feeds)
        for s in self.spec.states:
            self.state[s.input] = results[s.output]
        return feeds, results

    def step(self, chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one chunk from the session's own state; returns the non-state outputs."""
        _, results = self.advance(chunk)
        return {o.name: results[o.name] for o in self.spec.outputs}

    def call(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One stateless call on explicit inputs (chunk and state), contract names in and out."""
        bindings = self.contract.bindings
        artifact_feeds = {bindings[name].name: to_binding(value, bindings[name]) for name, value in feeds.items()}
        raw = self._invoke(artifact_feeds)
        return {name: from_binding(raw[bindings[name].name], bindings[name]) for name in self.spec.output_names}

    def stream(
        self,
        chunks: list[dict[str, np.ndarray]],
        progress: Callable[[Iterable, str, int | None], Iterator] | None = None,
        label: str = "",
        observe: Callable[[int, dict, dict], None] | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Closed loop from the initial state: the non-state outputs stacked per chunk ([steps, ...]) and seconds per call.

        `observe(step, feeds, results)` sees every call's inputs (chunk and state) and all its outputs, states included.
        """
        self.reset()
        collected: dict[str, list[np.ndarray]] = {o.name: [] for o in self.spec.outputs}
        seconds = np.zeros(len(chunks))
        clock = time.perf_counter
        iterator = progress(chunks, label, len(chunks)) if progress is not None else chunks
        for k, chunk in enumerate(iterator):
            started = clock()
            feeds, results = self.advance(chunk)
            seconds[k] = clock() - started
            for name in collected:
                collected[name].append(results[name])
            if observe is not None:
                observe(k, feeds, results)
        return {name: np.stack(values) for name, values in collected.items()}, seconds

    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError
