"""Feature frontends, batch and streaming, that produce bit-identical frames.

Frame i covers samples [i*hop - (win-hop), i*hop + hop): the signal is left-padded with
`win - hop` zeros, so every `hop` new samples complete exactly one frame and a 20 ms chunk
(320 samples) yields exactly two frames with no look-ahead. The streaming frontend keeps the
last `win - hop` samples in a ring buffer; both paths run the same per-frame arithmetic, so
they differ only by float32 rounding of differently blocked matrix products (about 5e-6).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipeline.spec import LogMelFrontend, PcmFrontend


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def _mel_matrix(cfg: LogMelFrontend) -> np.ndarray:
    """Triangular HTK-mel filterbank, shape [n_fft // 2 + 1, n_mels]."""
    bins = np.arange(cfg.n_fft // 2 + 1) * cfg.sample_rate / cfg.n_fft
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), cfg.n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None)


@lru_cache(maxsize=8)
def _window(win_length: int) -> np.ndarray:
    return np.hanning(win_length + 1)[:-1]


def _frames_to_logmel(frames: np.ndarray, cfg: LogMelFrontend) -> np.ndarray:
    """frames: [T, win_length] float64 -> [T, n_mels] float32."""
    spectrum = np.fft.rfft(frames * _window(cfg.win_length), n=cfg.n_fft, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    return np.log(power @ _mel_matrix(cfg) + cfg.log_floor).astype(np.float32)


def logmel_batch(audio: np.ndarray, cfg: LogMelFrontend) -> np.ndarray:
    """Whole-utterance log-mel, [T, n_mels] with T = len(audio) // hop."""
    history = cfg.win_length - cfg.hop_length
    padded = np.concatenate([np.zeros(history), np.asarray(audio, dtype=np.float64)])
    n_frames = len(audio) // cfg.hop_length
    if n_frames == 0:
        return np.zeros((0, cfg.n_mels), np.float32)
    index = np.arange(n_frames)[:, None] * cfg.hop_length + np.arange(cfg.win_length)[None, :]
    return _frames_to_logmel(padded[index], cfg)


class StreamingLogMel:
    """Turns successive PCM chunks into log-mel frames through a ring buffer of past samples."""

    def __init__(self, cfg: LogMelFrontend) -> None:
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self._history = np.zeros(self.cfg.win_length - self.cfg.hop_length)
        self._pending = np.zeros(0)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Feed any number of samples; returns the frames they completed, [T, n_mels]."""
        cfg = self.cfg
        samples = np.concatenate([self._pending, np.asarray(chunk, dtype=np.float64)])
        n_frames = len(samples) // cfg.hop_length
        used = n_frames * cfg.hop_length
        self._pending = samples[used:]
        if n_frames == 0:
            return np.zeros((0, cfg.n_mels), np.float32)
        window = np.concatenate([self._history, samples[:used]])
        index = np.arange(n_frames)[:, None] * cfg.hop_length + np.arange(cfg.win_length)[None, :]
        self._history = window[len(window) - len(self._history):]
        return _frames_to_logmel(window[index], cfg)


def stream_chunks(audio: np.ndarray, frontend: LogMelFrontend | PcmFrontend, chunk_samples: int) -> list[np.ndarray]:
    """Split audio into whole chunks and run the device-side frontend on each, in order.

    Returns one array per call: [frames_per_chunk, n_mels] for log-mel, [chunk_samples] for PCM.
    A trailing partial chunk is dropped, as an app waiting for a full buffer would.
    """
    n_chunks = len(audio) // chunk_samples
    pcm = np.asarray(audio[: n_chunks * chunk_samples], dtype=np.float32).reshape(n_chunks, chunk_samples)
    if isinstance(frontend, PcmFrontend):
        return list(pcm)
    streaming = StreamingLogMel(frontend)
    return [streaming.push(chunk) for chunk in pcm]
