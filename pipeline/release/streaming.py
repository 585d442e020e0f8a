"""The reference streaming client behind `speechport stream`: what an app's audio loop does, in Python.

A microphone thread delivers audio in small blocks at the pace of the wall clock (or all at once
with `fast`) into a ring buffer of raw samples; the loop takes whole chunks from it, runs the
contract's frontend, calls the artifact through its backend's session (which feeds every state
output back), and decodes incrementally (greedy CTC carrying the last class across chunks, or
per-frame decisions). When processing falls behind real time and the buffer is full, the oldest
whole chunk is dropped and counted: latency stays bounded and the loss is reported, never hidden.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.spec import CtcDecoder, DecisionDecoder, StreamSpec

BLOCK_MS = 10  # what an Android AudioRecord / AVAudioEngine callback typically delivers


class RingBuffer:
    """Raw samples, fixed capacity; a write that does not fit drops the oldest whole chunks first and counts them."""

    def __init__(self, capacity_chunks: int, chunk_samples: int) -> None:
        self.chunk = chunk_samples
        self.capacity = capacity_chunks * chunk_samples
        self._data = np.zeros(self.capacity, np.float32)
        self._start = 0  # read position
        self._size = 0
        self.dropped_chunks = 0
        self.max_fill = 0
        self._cond = threading.Condition()
        self.closed = False

    def write(self, samples: np.ndarray) -> None:
        with self._cond:
            overflow = self._size + len(samples) - self.capacity
            if overflow > 0:
                drop = -(-overflow // self.chunk)  # whole chunks, so the next read stays chunk-aligned
                drop_samples = min(drop * self.chunk, self._size)
                self._start = (self._start + drop_samples) % self.capacity
                self._size -= drop_samples
                self.dropped_chunks += drop
            end = (self._start + self._size) % self.capacity
            first = min(len(samples), self.capacity - end)
            self._data[end : end + first] = samples[:first]
            self._data[: len(samples) - first] = samples[first:]
            self._size += len(samples)
            self.max_fill = max(self.max_fill, self._size)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify()

    def read_chunk(self) -> np.ndarray | None:
        """The next whole chunk, waiting for it; None once the writer closed and less than a chunk is left."""
        with self._cond:
            while self._size < self.chunk and not self.closed:
                self._cond.wait()
            if self._size < self.chunk:
                return None
            index = (self._start + np.arange(self.chunk)) % self.capacity
            chunk = self._data[index].copy()
            self._start = (self._start + self.chunk) % self.capacity
            self._size -= self.chunk
            return chunk


class IncrementalDecoder:
    """Greedy CTC or per-frame decisions, chunk by chunk; the same text as decoding the whole stream at once."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.decoder = spec.decoder
        self.ctc = next((o for o in spec.outputs if o.kind == "ctc_logits"), None)
        self.decided = [o for o in spec.outputs if o.kind in ("decision_logits", "probability")]
        self.reset()

    def reset(self) -> None:
        self.previous = -1
        self.text: list[str] = []
        self.decisions: dict[str, list[int]] = {o.name: [] for o in self.decided}

    def push(self, outputs: dict[str, np.ndarray]) -> None:
        from pipeline.verify.metrics import per_frame

        if self.ctc is not None and isinstance(self.decoder, CtcDecoder):
            for c in per_frame(outputs[self.ctc.name][None], self.ctc.time_axis).argmax(axis=-1).tolist():
                if c != self.previous and c != self.decoder.blank:
                    self.text.append(self.decoder.vocabulary[c - 1 if c > self.decoder.blank else c])
                self.previous = c
        for o in self.decided:
            frames = per_frame(outputs[o.name][None], o.time_axis)
            if o.kind == "probability":
                self.decisions[o.name] += (frames.reshape(-1) >= o.threshold).astype(int).tolist()
            else:
                self.decisions[o.name] += frames.argmax(axis=-1).tolist()

    @property
    def transcript(self) -> str:
        return "".join(self.text)

    def segments(self, name: str, frame_seconds: float) -> list[tuple[str, float, float]]:
        """(class, start s, end s) for each run of equal decisions of output `name`."""
        classes = self.decoder.classes if isinstance(self.decoder, DecisionDecoder) else None
        runs, values = [], self.decisions[name]
        start = 0
        for i in range(1, len(values) + 1):
            if i == len(values) or values[i] != values[start]:
                label = classes[values[start]] if classes is not None and values[start] < len(classes) else str(values[start])
                runs.append((label, start * frame_seconds, i * frame_seconds))
                start = i
        return runs


@dataclass
class StreamResult:
    chunks: int = 0
    dropped_chunks: int = 0
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    wall_seconds: float = 0.0
    max_buffered_ms: float = 0.0
    slowest_chunk_ms: float = 0.0
    transcript: str | None = None
    decisions: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)

    @property
    def rtf(self) -> float:
        return self.compute_seconds / self.audio_seconds if self.audio_seconds else 0.0


def _microphone(ring: RingBuffer, audio: np.ndarray, block: int, rate: int, fast: bool) -> None:
    started = time.monotonic()
    for offset in range(0, len(audio), block):
        if not fast:
            # a block exists once its last sample has been recorded
            delay = started + (offset + block) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        ring.write(audio[offset : offset + block])
    ring.close()


def stream_audio(
    session,
    audio: np.ndarray,
    *,
    fast: bool = False,
    buffer_ms: float = 500.0,
    on_chunk: Callable[[StreamResult, IncrementalDecoder, int], None] | None = None,
) -> StreamResult:
    """Stream `audio` (float32, the contract's sample rate) through `session` as a device would."""
    from pipeline.audio.frontend import StreamingLogMel
    from pipeline.audio.stream import to_input_layout
    from pipeline.spec import LogMelFrontend

    spec: StreamSpec = session.spec
    rate, chunk = spec.frontend.sample_rate, spec.chunk_samples
    capacity = max(1, int(round(buffer_ms * rate / 1000 / chunk)))
    # fast: the whole file fits, nothing is dropped; real time: a bounded buffer of `buffer_ms`
    ring = RingBuffer(-(-len(audio) // chunk) + 1 if fast else capacity, chunk)
    frontend = StreamingLogMel(spec.frontend) if isinstance(spec.frontend, LogMelFrontend) else None
    decoder = IncrementalDecoder(spec)
    session.reset()
    target = spec.inputs[0]
    result = StreamResult()
    total = len(audio) // chunk
    mic = threading.Thread(target=_microphone, args=(ring, audio, rate * BLOCK_MS // 1000, rate, fast), daemon=True)
    started = time.perf_counter()
    mic.start()
    while (samples := ring.read_chunk()) is not None:
        began = time.perf_counter()
        features = frontend.push(samples) if frontend is not None else samples
        decoder.push(session.step({target.name: to_input_layout(features, target)}))
        spent = time.perf_counter() - began
        result.compute_seconds += spent
        result.slowest_chunk_ms = max(result.slowest_chunk_ms, 1000 * spent)
        result.chunks += 1
        result.dropped_chunks = ring.dropped_chunks
        if on_chunk is not None:
            on_chunk(result, decoder, total)
    mic.join()
    result.wall_seconds = time.perf_counter() - started
    result.dropped_chunks = ring.dropped_chunks
    result.audio_seconds = (result.chunks + result.dropped_chunks) * chunk / rate
    result.max_buffered_ms = 1000 * ring.max_fill / rate
    if decoder.ctc is not None and isinstance(spec.decoder, CtcDecoder):
        result.transcript = decoder.transcript
    frame_seconds = chunk / rate
    for o in decoder.decided:
        frames = len(decoder.decisions[o.name]) // max(1, result.chunks)
        result.decisions[o.name] = decoder.segments(o.name, frame_seconds / max(1, frames))
    return result
