"""The reference client's parts: the ring buffer drops whole chunks and counts them; a slow loop is reported, not hidden."""

from __future__ import annotations

import time

import numpy as np

from pipeline.release.streaming import RingBuffer, stream_audio
from pipeline.spec import CtcDecoder, InputSpec, LogMelFrontend, OutputSpec, StreamSpec


def test_ring_buffer_keeps_chunk_order_and_drops_the_oldest_whole_chunks() -> None:
    ring = RingBuffer(capacity_chunks=3, chunk_samples=4)
    ring.write(np.arange(10, dtype=np.float32))  # 2.5 chunks
    np.testing.assert_array_equal(ring.read_chunk(), [0, 1, 2, 3])
    ring.write(np.arange(10, 20, dtype=np.float32))  # 6 + 10 = 16 > 12: two whole chunks go
    assert ring.dropped_chunks == 1
    np.testing.assert_array_equal(ring.read_chunk(), [8, 9, 10, 11])
    ring.close()
    assert ring.read_chunk() is not None and ring.read_chunk() is not None and ring.read_chunk() is None


class _SlowSession:
    """A stand-in runtime that takes 3x real time per chunk and emits one blank-free class per frame."""

    def __init__(self, seconds_per_call: float) -> None:
        self.spec = StreamSpec(
            chunk_samples=320,
            frontend=LogMelFrontend(),
            inputs=(InputSpec(name="feats", shape=(2, 80), time_axis=0),),
            outputs=(OutputSpec(name="logits", shape=(2, 3), time_axis=0, kind="ctc_logits"),),
            decoder=CtcDecoder(vocabulary="ab"),
        )
        self.seconds_per_call, self.calls = seconds_per_call, 0

    def reset(self) -> None:
        self.calls = 0

    def step(self, chunk: dict) -> dict:
        time.sleep(self.seconds_per_call)
        self.calls += 1
        logits = np.zeros((2, 3), np.float32)
        logits[:, 1 + self.calls % 2] = 1.0  # a, b, a, ...: one character per chunk
        return {"logits": logits}


def test_a_loop_slower_than_real_time_drops_chunks_and_says_so() -> None:
    audio = np.zeros(16_000, np.float32)  # 1 s, 50 chunks of 20 ms
    result = stream_audio(_SlowSession(0.06), audio, buffer_ms=100)
    assert result.dropped_chunks > 0 and result.chunks + result.dropped_chunks == 50
    assert result.max_buffered_ms <= 100 + 10  # bounded latency, not a growing queue
    fast = stream_audio(_SlowSession(0.0), audio, fast=True)
    assert fast.dropped_chunks == 0 and fast.chunks == 50 and fast.transcript == "ba" * 25
