"""The committed espeak-ng corpus and its loader (no espeak-ng needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.audio.corpus import SAMPLE_RATE, VOCABULARY, Utterance, load_split, speech_mask, split_files
from pipeline.errors import UserError

CORPUS = Path(__file__).resolve().parents[2] / "models" / "corpus"


@pytest.fixture(scope="module")
def verification() -> list[Utterance]:
    return load_split(CORPUS, "verification")


def _texts(split: str) -> set[str]:
    index = json.loads((CORPUS / split / "index.json").read_text())
    return {u["text"] for u in index["utterances"] if u["text"]}


def test_constants_mirror_the_model_and_spec() -> None:
    from pipeline.spec import SAMPLE_RATE as SPEC_RATE

    assert SAMPLE_RATE == SPEC_RATE == 16_000
    common = pytest.importorskip("models.common")
    assert VOCABULARY == common.VOCABULARY


def test_verification_split_loads(verification: list[Utterance]) -> None:
    seconds = sum(len(u.audio) for u in verification) / SAMPLE_RATE
    assert seconds >= 5 * 60
    assert len({u.id for u in verification}) == len(verification)
    for u in verification:
        assert u.audio.dtype == np.float32 and u.audio.ndim == 1
        assert np.all(np.abs(u.audio) <= 1.0)
        assert set(u.text) <= set(VOCABULARY)
        assert u.text == " ".join(u.text.split())
    silent = [u for u in verification if not u.text]
    assert silent and all(not u.speech for u in silent)
    assert sum(1 for u in verification if u.text) >= 0.85 * len(verification)


def test_audio_files_are_16k_mono_16bit_flac() -> None:
    for split in ("train", "calibration", "verification"):
        for path in split_files(CORPUS, split):
            if path.name == "index.json":
                continue
            info = sf.info(str(path))
            assert (info.samplerate, info.channels, info.format, info.subtype) == (SAMPLE_RATE, 1, "FLAC", "PCM_16")


def test_speech_regions_lie_inside_the_audio(verification: list[Utterance]) -> None:
    for u in verification:
        end = 0
        for start, stop in u.speech:
            assert end <= start < stop <= len(u.audio), u.id
            end = stop
        mask = speech_mask(u)
        assert mask.dtype == bool and mask.shape == u.audio.shape
        assert mask.sum() == sum(stop - start for start, stop in u.speech)
        if u.speech:  # speech is louder than the noise around it
            rms = lambda x: float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))  # noqa: E731
            assert rms(u.audio[mask]) > 3 * rms(u.audio[~mask]), u.id


def test_splits_share_no_sentence() -> None:
    train, calibration, verification = _texts("train"), _texts("calibration"), _texts("verification")
    assert not train & verification and not train & calibration and not calibration & verification


def test_split_files_lists_index_and_audio_sorted() -> None:
    files = split_files(CORPUS, "calibration")
    index = json.loads((CORPUS / "calibration" / "index.json").read_text())
    assert files == sorted(files)
    assert CORPUS / "calibration" / "index.json" in files
    assert len(files) == len(index["utterances"]) + 1


# ---- bad input ------------------------------------------------------------------------------


def _write_split(root: Path, text: str = "hello world", *, rate: int = SAMPLE_RATE, channels: int = 1,
                 write_audio: bool = True) -> Path:
    split = root / "split"
    split.mkdir(parents=True)
    samples = np.zeros((SAMPLE_RATE // 2, channels), dtype=np.float32)
    samples[1000:2000] = 0.1
    if write_audio:
        sf.write(str(split / "a.flac"), samples, rate, format="FLAC", subtype="PCM_16")
    index = {
        "schema": 1, "sample_rate": SAMPLE_RATE,
        "utterances": [{"id": "a", "file": "a.flac", "text": text, "voice": "en", "rate": 150, "pitch": 50,
                        "seconds": 0.5, "speech": [[1000, 2000]]}],
    }
    (split / "index.json").write_text(json.dumps(index))
    return split


def test_a_good_tmp_split_loads(tmp_path: Path) -> None:
    _write_split(tmp_path)
    [u] = load_split(tmp_path, "split")
    assert u.text == "hello world" and u.speech == ((1000, 2000),) and len(u.audio) == SAMPLE_RATE // 2


def test_missing_split_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nowhere") as err:
        load_split(tmp_path, "nowhere")
    assert err.value.where == str(tmp_path / "nowhere")


def test_missing_index(tmp_path: Path) -> None:
    (tmp_path / "split").mkdir()
    with pytest.raises(UserError, match="index.json"):
        load_split(tmp_path, "split")
    with pytest.raises(UserError, match="index.json"):
        split_files(tmp_path, "split")


def test_bad_json(tmp_path: Path) -> None:
    split = _write_split(tmp_path)
    (split / "index.json").write_text('{"schema": 1, "utterances": [')
    with pytest.raises(UserError, match="JSON") as err:
        load_split(tmp_path, "split")
    assert err.value.where == str(split / "index.json")


def test_wrong_sample_rate(tmp_path: Path) -> None:
    _write_split(tmp_path, rate=8000)
    with pytest.raises(UserError, match="a.flac") as err:
        load_split(tmp_path, "split")
    assert "16000" in str(err.value) and "8000" in str(err.value)


def test_stereo_file(tmp_path: Path) -> None:
    _write_split(tmp_path, channels=2)
    with pytest.raises(UserError, match="a.flac") as err:
        load_split(tmp_path, "split")
    assert "mono" in str(err.value) and "2 channels" in str(err.value)


def test_text_outside_the_vocabulary(tmp_path: Path) -> None:
    _write_split(tmp_path, text="Hello, world")
    with pytest.raises(UserError, match=r"index\.json: utterances\[0\]\.text") as err:
        load_split(tmp_path, "split")
    assert "'H'" in str(err.value) and "','" in str(err.value)


def test_missing_audio_file(tmp_path: Path) -> None:
    _write_split(tmp_path, write_audio=False)
    for load in (load_split, split_files):
        with pytest.raises(UserError, match="a.flac") as err:
            load(tmp_path, "split")
        assert err.value.where.endswith("index.json: utterances[0].file")


def test_unreadable_audio(tmp_path: Path) -> None:
    split = _write_split(tmp_path)
    (split / "a.flac").write_bytes(b"not a flac file at all" * 10)
    with pytest.raises(UserError, match="a.flac"):
        load_split(tmp_path, "split")


def test_speech_region_beyond_the_audio(tmp_path: Path) -> None:
    split = _write_split(tmp_path)
    index = json.loads((split / "index.json").read_text())
    index["utterances"][0]["speech"] = [[1000, 10 * SAMPLE_RATE]]
    (split / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"utterances\[0\]\.speech"):
        load_split(tmp_path, "split")
