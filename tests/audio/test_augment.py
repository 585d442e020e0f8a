"""Augmented copies are seeded and byte-identical run to run, hit their SNR, reverberate, change speed, keep the truth."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audio.augment import (
    SNR_DB,
    augment,
    calibration_copy,
    components,
    draw,
    noisy_copy,
    room_impulse_response,
)
from pipeline.audio.corpus import Utterance, speech_mask
from pipeline.audio.stream import load_utterances, part_positions, part_utterances, stream_data
from tests.conftest import CORPUS


@pytest.fixture(scope="module")
def indexed() -> list[tuple[int, Utterance]]:
    """The first 8 utterances of the verification split, with their split positions."""
    return part_utterances(stream_data(max_seconds=None, corpus=CORPUS, split="verification"))[:8]


def _bytes(utterances: list[Utterance]) -> list[bytes]:
    return [u.audio.tobytes() for u in utterances]


def test_same_seed_gives_identical_bytes_and_another_seed_differs(indexed: list[tuple[int, Utterance]]) -> None:
    assert _bytes(noisy_copy(indexed, seed=0)) == _bytes(noisy_copy(indexed, seed=0))
    assert _bytes(calibration_copy(indexed, seed=0, copy=1)) == _bytes(calibration_copy(indexed, seed=0, copy=1))
    first, other = _bytes(noisy_copy(indexed, seed=0)), _bytes(noisy_copy(indexed, seed=1))
    assert all(a != b for a, b in zip(first, other))
    # copies differ from one another and from the noisy verification copy
    assert _bytes(calibration_copy(indexed, seed=0, copy=1))[0] != _bytes(calibration_copy(indexed, seed=0, copy=2))[0]


def test_noisy_copy_keeps_length_text_and_speech_regions(indexed: list[tuple[int, Utterance]]) -> None:
    for (_, clean), noisy in zip(indexed, noisy_copy(indexed, seed=0)):
        assert len(noisy.audio) == len(clean.audio) and noisy.audio.dtype == np.float32
        assert (noisy.text, noisy.speech, noisy.transcribed) == (clean.text, clean.speech, clean.transcribed)
        assert not np.array_equal(noisy.audio, clean.audio)
        assert np.abs(noisy.audio).max() <= 1.0


def test_snr_over_the_speech_samples_is_the_drawn_one(indexed: list[tuple[int, Utterance]]) -> None:
    pool = dict(indexed)
    kinds, snrs = set(), set()
    for seed in range(4):
        for index, utterance in indexed:
            others = [i for i, _ in indexed if i != index]
            augmentation, rng = draw(seed, index, 0, others, perturb=False)
            source, wet, noise = components(utterance, augmentation, rng, pool)
            where = speech_mask(source)
            if not where.any():
                where = np.ones(len(wet), dtype=bool)
            achieved = 10 * np.log10(np.mean(wet[where] ** 2) / np.mean(noise[where] ** 2))
            assert abs(achieved - augmentation.snr_db) <= 0.5, (augmentation, achieved)
            kinds.add(augmentation.noise)
            snrs.add(augmentation.snr_db)
    assert kinds == {"white", "pink", "babble"} and snrs == set(SNR_DB)


def test_noisy_copy_mixture_is_reverberant_speech_plus_noise(indexed: list[tuple[int, Utterance]]) -> None:
    index, utterance = indexed[0]
    augmentation, rng = draw(0, index, 0, [i for i, _ in indexed if i != index], perturb=False)
    _, wet, noise = components(utterance, augmentation, rng, dict(indexed))
    (mixed, drawn), *_ = augment(indexed, 0, 0, perturb=False)
    assert drawn == augmentation
    np.testing.assert_allclose(mixed.audio, np.clip(wet + noise, -1, 1), atol=1e-6)


def _decay_seconds(rir: np.ndarray, rate: int = 16_000) -> float:
    """Schroeder backward integration: seconds until the tail's energy has fallen 20 dB, times 3 (T20 -> RT60)."""
    energy = np.cumsum(rir[1:][::-1] ** 2)[::-1]
    level = 10 * np.log10(energy / energy[0])
    return 3 * int(np.argmax(level <= -20)) / rate


def test_reverb_decays_over_its_rt60_and_a_longer_rt60_lengthens_the_decay() -> None:
    for rt60 in (0.2, 0.4, 0.7):
        rir = room_impulse_response(np.random.default_rng(0), rt60, drr_db=5.0)
        assert rir[0] == 1.0  # the direct path keeps its level
        assert abs(_decay_seconds(rir) - rt60) < 0.1 * rt60, (rt60, _decay_seconds(rir))
        assert abs(10 * np.log10(1 / np.sum(rir[1:] ** 2)) - 5.0) < 1e-6


def test_reverb_carries_energy_past_the_end_of_speech() -> None:
    """A click in silence: clean, nothing follows it; reverberated with RT60 0.6 s, energy goes on for hundreds of ms."""
    from pipeline.audio.augment import reverberate

    audio = np.zeros(16_000)
    audio[1000] = 1.0
    wet = reverberate(audio, room_impulse_response(np.random.default_rng(1), 0.6, drr_db=0.0))
    after = lambda x, ms: float(np.sum(x[1000 + 16 * ms :] ** 2))  # noqa: E731
    assert after(audio, 50) == 0.0
    assert after(wet, 50) > 0.1 * after(wet, 1) and after(wet, 300) > 1e-3 * after(wet, 1)


def test_calibration_copy_changes_speed_and_gain_and_keeps_the_text(indexed: list[tuple[int, Utterance]]) -> None:
    result = augment(indexed, 0, 1, perturb=True)
    assert any(a.speed < 1 for _, a in result) and any(a.speed > 1 for _, a in result)
    for (_, clean), (copy, augmentation) in zip(indexed, result):
        assert 0.9 <= augmentation.speed <= 1.1 and -12 <= augmentation.gain_db <= 6
        assert abs(len(copy.audio) - len(clean.audio) / augmentation.speed) <= 2
        assert copy.text == clean.text and copy.transcribed == clean.transcribed
        assert len(copy.speech) == len(clean.speech)
        for (s, e), (cs, ce) in zip(clean.speech, copy.speech):
            assert abs(cs - s / augmentation.speed) <= 2 and abs(ce - e / augmentation.speed) <= 2
        assert np.abs(copy.audio).max() <= 1.0


def test_held_out_and_fit_are_disjoint_interleaved_and_cover_the_split() -> None:
    for count, every in ((93, 4), (25, 4), (10, 3), (7, 2)):
        fit, held_out = part_positions(count, "fit", every), part_positions(count, "held_out", every)
        assert not set(fit) & set(held_out)
        assert sorted(fit + held_out) == part_positions(count, "all", every) == list(range(count))
        assert held_out == list(range(every - 1, count, every))
    data = stream_data(max_seconds=None, corpus=CORPUS, split="calibration", part="held_out")
    assert [i for i, _ in part_utterances(data)] == [3, 7, 11, 15, 19, 23]


def test_stream_data_applies_part_then_condition() -> None:
    clean = load_utterances(stream_data(max_seconds=None, corpus=CORPUS, split="calibration", part="held_out"))
    noisy = load_utterances(stream_data(max_seconds=None, corpus=CORPUS, split="calibration", part="held_out", condition="noisy"))
    assert [u.text for u in clean] == [u.text for u in noisy] and len(noisy) == 6
    indexed = part_utterances(stream_data(max_seconds=None, corpus=CORPUS, split="calibration", part="held_out"))
    assert _bytes(noisy) == _bytes(noisy_copy(indexed, 0))
    # babble draws only on the part streamed: a held-out utterance never hears a fitting one
    held_out = {i for i, _ in indexed}
    assert all(set(a.babble) <= held_out for _, a in augment(indexed, 0, 0, perturb=False))


def test_condition_part_and_seed_are_part_of_the_key() -> None:
    base = stream_data(max_seconds=None, corpus=CORPUS, split="calibration")
    keys = {
        base.model_dump_json(),
        base.replaced(condition="noisy").model_dump_json(),
        base.model_copy(update={"part": "fit"}).model_dump_json(),
        base.model_copy(update={"held_out_every": 5}).model_dump_json(),
        base.model_copy(update={"augment_seed": 1}).model_dump_json(),
    }
    assert len(keys) == 5


def test_an_empty_part_is_a_user_error() -> None:
    from pipeline.errors import UserError

    data = stream_data(max_seconds=None, corpus=CORPUS, split="calibration", part="held_out", held_out_every=40)
    with pytest.raises(UserError, match="part of split 'calibration' is empty"):
        load_utterances(data)


def test_a_change_to_the_copies_changes_the_key_of_noisy_streams_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.audio import augment as augment_module
    from pipeline.verify.calibrate import CalibrateConfig

    clean = stream_data(max_seconds=None, corpus=CORPUS, split="calibration")
    noisy = clean.replaced(condition="noisy")
    assert clean.augment_version is None and noisy.augment_version == augment_module.AUGMENT_VERSION
    assert CalibrateConfig(data=clean, augmented_copies=0).augment_version is None
    calibrated = CalibrateConfig(data=clean, augmented_copies=2)
    monkeypatch.setattr(augment_module, "AUGMENT_VERSION", "next")
    assert clean.replaced(condition="noisy").model_dump_json() != noisy.model_dump_json()
    assert CalibrateConfig(data=clean, augmented_copies=2) != calibrated
    assert stream_data(max_seconds=None, corpus=CORPUS, split="calibration") == clean
    assert noisy.replaced(condition="clean").augment_version is None
