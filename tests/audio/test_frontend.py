"""The streaming log-mel frontend gives the batch frames; CTC decoding and CER behave."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audio.ctc import cer, ctc_greedy
from pipeline.audio.frontend import StreamingLogMel, logmel_batch, stream_chunks
from pipeline.spec import LogMelFrontend, PcmFrontend


@pytest.mark.parametrize("chunk", [320, 160, 640, 123])
def test_streaming_logmel_equals_batch_on_real_speech(chunk: int) -> None:
    from pipeline.audio.corpus import load_split
    from tests.conftest import CORPUS

    audio = np.concatenate([u.audio for u in load_split(CORPUS, "verification")[:6]])
    cfg = LogMelFrontend()
    batch = logmel_batch(audio, cfg)
    streaming = StreamingLogMel(cfg)
    frames = np.concatenate([streaming.push(audio[i : i + chunk]) for i in range(0, len(audio), chunk)])
    assert frames.shape == batch.shape == (len(audio) // 160, 80)
    assert np.abs(frames - batch).max() < 1e-5


def test_twenty_ms_chunks_give_two_frames_each() -> None:
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    chunks = stream_chunks(audio, LogMelFrontend(), 320)
    assert len(chunks) == 50 and all(c.shape == (2, 80) for c in chunks)
    assert [c.shape for c in stream_chunks(audio, PcmFrontend(), 320)][:1] == [(320,)]


def test_first_frame_sees_only_left_padding_and_its_own_hop() -> None:
    cfg = LogMelFrontend()
    audio = np.zeros(1600)
    audio[200] = 1.0  # lands in frame 1's new hop, and in frame 2's window; never in frame 0
    frames = logmel_batch(audio, cfg)
    silent = np.log(cfg.log_floor)
    assert np.allclose(frames[0], silent) and not np.allclose(frames[1], silent)


def test_ctc_greedy_merges_repeats_and_drops_blanks() -> None:
    vocabulary = " ab"
    classes = [2, 2, 0, 2, 3, 3, 0, 1, 3]  # a a _ a b b _ ' ' b
    logits = np.eye(4)[classes]
    assert ctc_greedy(logits, vocabulary) == "aab b"


def test_cer() -> None:
    assert cer("hello world", "hello world") == 0.0
    assert cer("abcd", "abd") == 0.25
    assert cer("ab", "") == 1.0
    assert cer("  a   b ", "a b") == 0.0
