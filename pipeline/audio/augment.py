"""Seeded copies of a data section's utterances as a device hears them: in a room, in noise, louder or softer, faster or slower.

Two kinds of copy, both deterministic (byte-identical run to run) and drawn per utterance from
`numpy.random.default_rng([seed, copy, index])`, `index` being the utterance's position in its
split (not in the part streamed), so an utterance sounds the same whichever part it is streamed in:

- the noisy copy (`copy` 0, `noisy_copy`): the utterance convolved with a synthetic room impulse
  response, then mixed with noise;
- calibration copies (`copy` 1, 2, ..., `calibration_copy`): the same, after a speed change, and
  then a gain change.

Per utterance (every parameter is drawn, in this order, for both kinds of copy):

| parameter | drawn from | applied |
|---|---|---|
| speed | uniform 0.9 .. 1.1 | calibration copies: resampled with soxr (HQ) from 16 kHz x speed to 16 kHz, so the audio is 1/speed as long (pitch moves with it); the speech regions scale with it, the text is unchanged |
| gain | uniform -12 .. +6 dB | calibration copies, last: the mixture times the gain, clipped to [-1, 1] |
| RT60 | uniform 0.2 .. 0.5 s | impulse response: a direct path of 1.0 at sample 0 (its level is kept), then Gaussian noise decaying 60 dB in energy over RT60, RT60 long |
| direct-to-reverberant ratio | uniform 5 .. 15 dB | energy of the direct path over that of the decaying tail |
| SNR | one of 30, 20, 15 dB | noise power against the reverberant speech's, both over the utterance's speech samples (every sample where it has none or no labels; a digitally silent one counts as -80 dBFS) |
| noise | one of white, pink (1/f power), babble | babble: the sum of 3 to 5 other utterances of the part streamed (each looped from a random offset, at equal RMS), so a held-out part hears no fitting speech; all of them when it has fewer; white or pink when it has no other |

The ranges are a phone in a room, near its user: the default model (trained on clean synthesized speech) goes from
CER 0.25 to 0.39 on the noisy copy of the first 150 s of the verification split. With 20/10/5 dB, RT60 up to 0.7 s
and DRR 0-10 dB (the first version) it went to 0.61, where its transcript is mostly noise and agreement with it says
little about a quantized copy (measured with `make onnx`'s model, onnxruntime).

The reverberant signal is cut to the utterance's length (the tail past its end is dropped), so the
text, the speech regions and the length stay those of the clean utterance (of the speed-changed
one in a calibration copy). A mixture peaking above full scale is scaled down as a whole, speech
and noise alike, so the SNR holds and nothing clips before the gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pipeline.audio.corpus import SAMPLE_RATE, Utterance, speech_mask
from pipeline.errors import InternalError

# Bump whenever a copy's bytes may change (a parameter, a draw, the order of draws): it is part of the key of
# every stream of augmented audio (StreamData.augment_version, CalibrateConfig.augment_version).
AUGMENT_VERSION = "2"
NOISY_COPY = 0  # the copy index of the noisy verification copy; calibration copies are 1, 2, ...
SPEED = (0.9, 1.1)
GAIN_DB = (-12.0, 6.0)
RT60_SECONDS = (0.2, 0.5)
DRR_DB = (5.0, 15.0)
SNR_DB = (30.0, 20.0, 15.0)
NOISE_KINDS = ("white", "pink", "babble")
BABBLE_TALKERS = (3, 5)
SILENT_POWER = 1e-8  # -80 dBFS: the speech power assumed for a digitally silent utterance


@dataclass(frozen=True)
class Augmentation:
    """What was drawn for one utterance of one copy."""

    index: int  # the utterance's position in its split
    copy: int
    speed: float  # 1.0 in the noisy copy
    gain_db: float  # 0.0 in the noisy copy
    rt60: float
    drr_db: float
    snr_db: float
    noise: str
    babble: tuple[int, ...]  # split positions of the babbling utterances

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def draw(seed: int, index: int, copy: int, others: Sequence[int], perturb: bool) -> tuple[Augmentation, np.random.Generator]:
    """One utterance's parameters, and the generator (seeded from (seed, copy, index)) that then makes its noise and room."""
    if seed < 0 or index < 0 or copy < 0:
        raise InternalError(f"augmentation seeds are non-negative, got seed={seed} index={index} copy={copy}")
    rng = np.random.default_rng([seed, copy, index])
    speed, gain_db = float(rng.uniform(*SPEED)), float(rng.uniform(*GAIN_DB))
    rt60, drr_db = float(rng.uniform(*RT60_SECONDS)), float(rng.uniform(*DRR_DB))
    snr_db = SNR_DB[int(rng.integers(len(SNR_DB)))]
    kinds = NOISE_KINDS if others else NOISE_KINDS[:2]
    noise = kinds[int(rng.integers(len(kinds)))]
    talkers = int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))
    babble: tuple[int, ...] = ()
    if noise == "babble":
        babble = tuple(int(i) for i in rng.choice(np.asarray(others), size=min(talkers, len(others)), replace=False))
    if not perturb:
        speed, gain_db = 1.0, 0.0
    return Augmentation(index, copy, speed, gain_db, rt60, drr_db, snr_db, noise, babble), rng


def room_impulse_response(rng: np.random.Generator, rt60: float, drr_db: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A direct path of 1.0, then Gaussian noise whose energy falls 60 dB in `rt60` s, `drr_db` below the direct path."""
    length = int(np.ceil(rt60 * rate)) + 1
    n = np.arange(1, length)
    tail = rng.standard_normal(length - 1) * np.exp(-3.0 * np.log(10.0) * n / (rt60 * rate))
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(tail**2))
    return np.concatenate([[1.0], tail])


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """`audio` convolved with `rir`, cut to the length of `audio` (float64)."""
    size = len(audio) + len(rir) - 1
    fft_size = 1 << (size - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(audio, fft_size) * np.fft.rfft(rir, fft_size), fft_size)
    return wet[: len(audio)]


def pink_noise(rng: np.random.Generator, samples: int) -> np.ndarray:
    """Gaussian noise shaped to a 1/f power spectrum, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    frequency = np.fft.rfftfreq(samples)
    shape = np.zeros_like(frequency)
    shape[1:] = 1.0 / np.sqrt(frequency[1:])
    noise = np.fft.irfft(spectrum * shape, samples)
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def babble_noise(rng: np.random.Generator, talkers: Sequence[np.ndarray], samples: int) -> np.ndarray:
    """The talkers summed at equal RMS, each looped from a random offset to `samples`; unit RMS."""
    total = np.zeros(samples)
    for audio in talkers:
        looped = np.resize(np.roll(np.asarray(audio, dtype=np.float64), -int(rng.integers(len(audio)))), samples)
        total += looped / max(float(np.sqrt(np.mean(looped**2))), 1e-12)
    return total / max(float(np.sqrt(np.mean(total**2))), 1e-12)


def scale_to_snr(speech: np.ndarray, noise: np.ndarray, where: np.ndarray, snr_db: float) -> np.ndarray:
    """`noise` scaled so that speech power over noise power, both over the samples `where`, is `snr_db`."""
    speech_power = max(float(np.mean(speech[where] ** 2)), SILENT_POWER)
    noise_power = float(np.mean(noise[where] ** 2))
    if noise_power == 0.0:
        return noise
    return noise * np.sqrt(speech_power / (noise_power * 10.0 ** (snr_db / 10.0)))


def change_speed(utterance: Utterance, speed: float) -> Utterance:
    """The utterance played `speed` times as fast (1/speed as long), speech regions scaled with it."""
    import soxr

    audio = soxr.resample(np.asarray(utterance.audio, dtype=np.float32), SAMPLE_RATE * speed, SAMPLE_RATE, quality="HQ")
    speech = utterance.speech
    if speech:
        scale = len(audio) / len(utterance.audio)
        scaled = ((min(int(round(s * scale)), len(audio)), min(int(round(e * scale)), len(audio))) for s, e in speech)
        speech = tuple((s, e) for s, e in scaled if e > s)
    return replace(utterance, audio=np.ascontiguousarray(audio, dtype=np.float32), speech=speech)


def components(
    utterance: Utterance, augmentation: Augmentation, rng: np.random.Generator, pool: dict[int, Utterance]
) -> tuple[Utterance, np.ndarray, np.ndarray]:
    """(the speed-changed utterance, its reverberant audio, the noise added to it), float64, before the gain."""
    source = change_speed(utterance, augmentation.speed) if augmentation.speed != 1.0 else utterance
    samples = len(source.audio)
    if augmentation.noise == "white":
        noise = rng.standard_normal(samples)
    elif augmentation.noise == "pink":
        noise = pink_noise(rng, samples)
    else:
        noise = babble_noise(rng, [pool[i].audio for i in augmentation.babble], samples)
    rir = room_impulse_response(rng, augmentation.rt60, augmentation.drr_db)
    wet = reverberate(np.asarray(source.audio, dtype=np.float64), rir)
    where = speech_mask(source) if source.speech is not None else np.zeros(samples, dtype=bool)
    if not where.any():
        where = np.ones(samples, dtype=bool)
    noise = scale_to_snr(wet, noise, where, augmentation.snr_db)
    peak = float(np.max(np.abs(wet + noise), initial=0.0))
    if peak > 1.0:
        wet, noise = wet / peak, noise / peak
    return source, wet, noise


def augment(
    indexed: Sequence[tuple[int, Utterance]], seed: int, copy: int, perturb: bool
) -> list[tuple[Utterance, Augmentation]]:
    """Each (split position, utterance) of a part as copy `copy`, with what was drawn for it; babble from the part's others."""
    pool = dict(indexed)
    if len(pool) != len(indexed):
        raise InternalError(f"augment got split positions twice: {[i for i, _ in indexed]}")
    result = []
    for index, utterance in indexed:
        augmentation, rng = draw(seed, index, copy, [i for i, _ in indexed if i != index], perturb)
        source, wet, noise = components(utterance, augmentation, rng, pool)
        mixture = (wet + noise) * 10.0 ** (augmentation.gain_db / 20.0)
        audio = np.clip(mixture, -1.0, 1.0).astype(np.float32)
        result.append((replace(source, id=f"{utterance.id}+copy{copy}", audio=audio), augmentation))
    return result


def noisy_copy(indexed: Sequence[tuple[int, Utterance]], seed: int) -> list[Utterance]:
    """The part's utterances in a room and in noise (copy 0): same lengths, texts and speech regions."""
    return [u for u, _ in augment(indexed, seed, NOISY_COPY, perturb=False)]


def calibration_copy(indexed: Sequence[tuple[int, Utterance]], seed: int, copy: int) -> list[Utterance]:
    """Calibration copy `copy` (1, 2, ...): speed-changed, in a room, in noise, at another gain."""
    if copy <= NOISY_COPY:
        raise InternalError(f"calibration copies are numbered from {NOISY_COPY + 1}, got {copy}")
    return [u for u, _ in augment(indexed, seed, copy, perturb=True)]
