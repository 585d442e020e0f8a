"""A user's own audio as verification/calibration data: any rate, any channels, optional TSV transcripts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from pipeline.audio.corpus import SAMPLE_RATE, Utterance, load_split
from pipeline.audio.stream import AUDIO_SPLIT, load_utterances, speech_stream, stream_data, truth_cer
from pipeline.audio.user_audio import read_audio_file, read_transcripts, scan_audio
from pipeline.errors import UserError
from tests.conftest import CORPUS, REPO, write_manifest

RATE = 44_100


@pytest.fixture(scope="module")
def spoken() -> list[Utterance]:
    """Four spoken utterances of the committed verification split: real speech, 16 kHz, with their text."""
    return [u for u in load_split(CORPUS, "verification") if u.text][:4]


def _write_dir(directory: Path, utterances: list[Utterance], rate: int = RATE) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, u in enumerate(utterances):
        path = directory / f"utt{i}.wav"
        sf.write(str(path), soxr.resample(u.audio, SAMPLE_RATE, rate), rate, subtype="PCM_16")
        paths.append(path)
    return paths


@pytest.fixture
def speech_dir(tmp_path: Path, spoken: list[Utterance]) -> tuple[Path, Path]:
    """utt0..utt3.wav at 44.1 kHz and a TSV naming them four ways (relative path, stem, with a header)."""
    directory = tmp_path / "speech"
    _write_dir(directory, spoken)
    names = ["utt0.wav", "utt1", "./utt2.wav", "utt3"]
    tsv = tmp_path / "transcripts.tsv"
    lines = ["file\ttext", ""] + [f"{n}\t  {u.text.replace(' ', '  ')} " for n, u in zip(names, spoken)]
    tsv.write_text("\n".join(lines) + "\n")
    return directory, tsv


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


# ---- loading -----------------------------------------------------------------------------------


def test_a_directory_at_44k_loads_as_16k_utterances_with_their_transcripts(speech_dir: tuple[Path, Path], spoken: list[Utterance]) -> None:
    directory, tsv = speech_dir
    data = stream_data(max_seconds=None, audio=directory, transcripts=tsv)
    assert data.split == AUDIO_SPLIT and "audio" not in data.model_dump()  # paths are not part of the key
    loaded = load_utterances(data)
    assert [u.id for u in loaded] == ["utt0.wav", "utt1.wav", "utt2.wav", "utt3.wav"]
    for got, original in zip(loaded, spoken):
        assert got.audio.dtype == np.float32 and got.audio.ndim == 1 and np.abs(got.audio).max() <= 1.0
        assert abs(len(got.audio) - len(original.audio)) <= 2
        assert _correlation(got.audio, original.audio) > 0.99
        assert got.text == original.text  # whitespace normalized as the corpus is
        assert got.transcribed and got.speech is None


def test_stereo_8k_flac_is_downmixed_and_resampled(tmp_path: Path, spoken: list[Utterance]) -> None:
    original = spoken[0].audio
    narrow = soxr.resample(original, SAMPLE_RATE, 8000)
    stereo = np.stack([narrow, 0.5 * narrow + 0.01], axis=1)  # channels differ: the mean is 0.75 x + 0.005
    path = tmp_path / "stereo.flac"
    sf.write(str(path), stereo, 8000, format="FLAC", subtype="PCM_16")
    audio = read_audio_file(path)
    assert abs(len(audio) - len(original)) <= 2
    assert _correlation(audio, original) > 0.9
    expected = soxr.resample(0.75 * narrow + 0.005, 8000, SAMPLE_RATE)  # the mean of the channels, resampled
    assert np.abs(audio[: len(expected)] - expected[: len(audio)]).max() < 2e-4  # 16-bit FLAC: ~3e-5 per channel


def test_integer_samples_scale_to_minus_one_one(tmp_path: Path) -> None:
    pcm = np.zeros(1600, dtype=np.int32)
    pcm[10], pcm[20] = 2**30, -(2**31)
    sf.write(str(tmp_path / "a.wav"), pcm, SAMPLE_RATE, subtype="PCM_32")
    audio = read_audio_file(tmp_path / "a.wav")
    assert audio[10] == pytest.approx(0.5) and audio[20] == -1.0 and len(audio) == 1600


def test_a_glob_and_files_without_transcripts(tmp_path: Path, spoken: list[Utterance]) -> None:
    _write_dir(tmp_path / "a", spoken[:2])
    _write_dir(tmp_path / "b", spoken[2:3])
    (tmp_path / "a" / "notes.txt").write_text("not audio")
    tsv = tmp_path / "t.tsv"
    tsv.write_text(f"a/utt1.wav\t{spoken[1].text}\n")
    files = scan_audio(tmp_path / "*" / "utt*.wav", tsv).files
    assert [(f.name, f.transcript) for f in files] == [("a/utt0.wav", None), ("a/utt1.wav", spoken[1].text), ("b/utt0.wav", None)]


def _spell(text: str, frames: int, vocabulary: str, blank: int) -> np.ndarray:
    """Logits [frames, C] whose greedy CTC decoding is `text`: one character every other frame, blank between."""
    logits = np.zeros((frames, len(vocabulary) + 1), np.float32)
    logits[:, blank] = 1.0
    for k, ch in enumerate(text):
        logits[2 * k] = 0.0
        logits[2 * k, vocabulary.index(ch) + 1] = 1.0
    return logits


def test_cer_counts_only_files_with_transcripts(tmp_path: Path, spoken: list[Utterance]) -> None:
    from models.lstm_ctc import build
    from pipeline.audio.stream import frame_labels

    _write_dir(tmp_path / "d", spoken[:3])
    tsv = tmp_path / "t.tsv"
    tsv.write_text(f"utt1\t{spoken[1].text}\n")
    spec = build(hidden=32, layers=1).streaming_spec(20)
    vocabulary, blank = spec.decoder.vocabulary, spec.decoder.blank
    stream = speech_stream(stream_data(max_seconds=None, audio=tmp_path / "d", transcripts=tsv), spec)
    assert stream.text == spoken[1].text and stream.speech is None
    first = len(read_audio_file(tmp_path / "d" / "utt0.wav"))
    assert not stream.scored[:first].any() and stream.scored[first]
    assert abs(int(stream.scored.sum()) - len(spoken[1].audio)) <= 2
    # the truth spelled inside the transcribed file, "zzz" in the files around it
    hop = spec.chunk_samples // 2  # two frames per 20 ms chunk
    frames = 2 * len(stream.chunks)
    inside = np.flatnonzero(frame_labels(stream.scored, frames, hop))
    logits = _spell("z" * (frames // 2), frames, vocabulary, blank)
    logits[inside] = _spell(spoken[1].text, len(inside), vocabulary, blank)
    assert truth_cer(stream, logits, vocabulary, blank, hop) == 0.0
    from pipeline.audio.ctc import cer, ctc_greedy

    assert cer(stream.text, ctc_greedy(logits, vocabulary, blank)) > 0.5  # what scoring every file would say
    untranscribed = speech_stream(stream_data(max_seconds=None, audio=tmp_path / "d"), spec)
    assert untranscribed.text == "" and not untranscribed.scored.any()
    assert truth_cer(untranscribed, logits, vocabulary, blank, hop) is None


# ---- bad audio ---------------------------------------------------------------------------------


def test_random_bytes_with_a_wav_name(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "noise.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(UserError, match="readable WAV or FLAC") as err:
        scan_audio(tmp_path / "d", None)
    assert err.value.where == str(tmp_path / "d" / "noise.wav")


def test_truncated_wav_and_flac(tmp_path: Path, spoken: list[Utterance]) -> None:
    [wav] = _write_dir(tmp_path / "w", spoken[:1])
    wav.write_bytes(wav.read_bytes()[: wav.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated WAV") as err:
        scan_audio(tmp_path / "w", None)
    assert err.value.where == str(wav)
    flac = tmp_path / "f" / "a.flac"
    flac.parent.mkdir()
    sf.write(str(flac), spoken[0].audio, SAMPLE_RATE, format="FLAC")
    flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    scan_audio(flac.parent, None)  # the header is intact: only decoding finds it
    with pytest.raises(UserError, match="corrupt audio") as err:
        read_audio_file(flac)
    assert err.value.where == str(flac)


def test_zero_length_audio(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    sf.write(str(tmp_path / "d" / "empty.wav"), np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(UserError, match="zero samples") as err:
        scan_audio(tmp_path / "d", None)
    assert err.value.where == str(tmp_path / "d" / "empty.wav")


def test_empty_directory_and_glob_matching_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no audio here")
    with pytest.raises(UserError, match="no WAV or FLAC files") as err:
        scan_audio(tmp_path / "empty", None)
    assert err.value.where == str(tmp_path / "empty")
    with pytest.raises(UserError, match="matches no file") as err:
        scan_audio(tmp_path / "empty" / "*.flac", None)
    assert err.value.where == str(tmp_path / "empty" / "*.flac")
    with pytest.raises(UserError, match="not found"):
        scan_audio(tmp_path / "absent", None)


# ---- bad transcripts ---------------------------------------------------------------------------

NAMES = ["a.wav", "b.wav", "sub/c.flac", "sub/a.wav", "x/d.wav", "y/d.flac"]
TSV_CASES = {
    "no tab": ("b.wav\tfine\nb.wav hello\n", 2, "no tab"),
    "file does not exist": ("file\ttext\n\nb.wav\tfine\ne.wav\thello\n", 4, "'e.wav' names no audio file"),
    "duplicate": ("b.wav\tone\nsub/c.flac\tx\nb\ttwo\n", 3, "second transcript for b.wav (the first is on line 1)"),
    "ambiguous stem": ("a\thello\nd\thello\n", 2, "could name any of ['x/d.wav', 'y/d.flac']"),
    "no file name": ("\thello\n", 1, "expected a file name"),
    "not utf-8": ("b.wav\tok\nb.wav\t\xff\n", 2, "expected UTF-8"),
}


@pytest.mark.parametrize("case", sorted(TSV_CASES))
def test_bad_transcript_line_names_file_and_line(case: str, tmp_path: Path) -> None:
    text, line, message = TSV_CASES[case]
    tsv = tmp_path / "t.tsv"
    tsv.write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError) as err:
        read_transcripts(tsv, NAMES)
    assert err.value.where == f"{tsv}:{line}" and message in err.value.message, str(err.value)


def test_transcript_names_resolve_most_specific_first(tmp_path: Path) -> None:
    tsv = tmp_path / "t.tsv"
    tsv.write_text("a.wav\tA\nsub/a\tSub A\nc\t  Hello,   World!  \n\n")
    # kept as written (a user model has its own vocabulary), whitespace normalized
    assert read_transcripts(tsv, NAMES) == {"a.wav": "A", "sub/a.wav": "Sub A", "sub/c.flac": "Hello, World!"}


# ---- the cache key -----------------------------------------------------------------------------


def test_digest_covers_file_bytes_names_and_transcripts(speech_dir: tuple[Path, Path]) -> None:
    directory, tsv = speech_dir

    def digest() -> str:
        return stream_data(max_seconds=None, audio=directory, transcripts=tsv).split_sha256

    first = digest()
    assert digest() == first
    data, rate = sf.read(str(directory / "utt2.wav"), dtype="int16")
    data[len(data) // 2] += 1
    sf.write(str(directory / "utt2.wav"), data, rate, subtype="PCM_16")
    edited = digest()
    assert edited != first
    tsv.write_text(tsv.read_text().replace("utt1\t", "utt1\tand "))
    assert digest() != edited
    without = stream_data(max_seconds=None, audio=directory).split_sha256
    assert without not in (first, edited)
    (directory / "utt3.wav").rename(directory / "utt9.wav")
    assert stream_data(max_seconds=None, audio=directory).split_sha256 != without


# ---- end to end through the CLI ----------------------------------------------------------------


def _audio_manifest(tmp_path: Path, tiny_manifest: dict, **verification) -> Path:
    tiny_manifest["verification"] = {key: str(value) for key, value in verification.items()}
    return write_manifest(tmp_path / "user.yaml", **tiny_manifest)


def test_build_verifies_on_a_directory_of_44k_wav_with_transcripts(
    tmp_path: Path, tiny_manifest: dict, speech_dir: tuple[Path, Path], cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipeline.cli import main

    directory, tsv = speech_dir
    path = _audio_manifest(tmp_path, tiny_manifest, audio=directory, transcripts=tsv)
    code = main(["build", str(path), "--out", str(tmp_path / "out"), "--jobs", "1"])
    assert code in (0, 1), capsys.readouterr().err  # a random tiny model may miss a bound; it must not error
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (variant,) = report["variants"]
    assert variant["status"] in ("passed", "failed") and isinstance(variant["cer"], float)
    assert isinstance(report["reference_cer"], float)
    seconds = sum(sf.info(str(p)).frames for p in directory.iterdir()) / RATE
    assert abs(variant["audio_seconds"] - seconds) <= 0.02  # the trailing partial 20 ms chunk is dropped


def test_build_on_audio_without_transcripts_reports_no_cer(
    tmp_path: Path, speech_dir: tuple[Path, Path], cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """kws: decision outputs and no labelled regions, so agreement with PyTorch but no decision accuracy."""
    from pipeline.cli import main

    directory, _ = speech_dir
    manifest = {
        "name": "user-kws",
        "model": {"factory": "models.kws:build", "checkpoint": str(REPO / "models" / "checkpoints" / "kws.safetensors")},
        "backends": {"onnxruntime": ["fp32"]},
        "verification": {"audio": str(directory), "max_seconds": 4},
    }
    code = main(["build", str(write_manifest(tmp_path / "kws.yaml", **manifest)), "--out", str(tmp_path / "out"), "--jobs", "1"])
    assert code in (0, 1), capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (variant,) = report["variants"]
    assert "decision_agreement" in variant and "decision_accuracy" not in variant and "cer" not in variant
    assert report["reference_cer"] is None


def test_build_with_a_corrupt_file_exits_2_naming_it(
    tmp_path: Path, tiny_manifest: dict, speech_dir: tuple[Path, Path], cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipeline.cli import main

    directory, tsv = speech_dir
    (directory / "utt1.wav").write_bytes(np.random.default_rng(1).bytes(20_000))
    path = _audio_manifest(tmp_path, tiny_manifest, audio=directory, transcripts=tsv)
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{directory / 'utt1.wav'}: expected a readable WAV or FLAC file" in err and "Traceback" not in err, err


def test_build_with_a_bad_transcript_line_exits_2_naming_file_and_line(
    tmp_path: Path, tiny_manifest: dict, speech_dir: tuple[Path, Path], cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipeline.cli import main

    directory, tsv = speech_dir
    tsv.write_text(tsv.read_text() + "utt7.wav\thello\n")
    path = _audio_manifest(tmp_path, tiny_manifest, audio=directory, transcripts=tsv)
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tsv}:7: 'utt7.wav' names no audio file" in err, err


def test_build_with_a_flac_truncated_after_its_header_exits_2_naming_it(
    tmp_path: Path, tiny_manifest: dict, spoken: list[Utterance], cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """Found only when a stage decodes the file: still the user's error, naming the file."""
    from pipeline.cli import main

    directory = tmp_path / "flac"
    directory.mkdir()
    for i, u in enumerate(spoken[:2]):
        sf.write(str(directory / f"{i}.flac"), u.audio, SAMPLE_RATE, format="FLAC")
    broken = directory / "1.flac"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    path = _audio_manifest(tmp_path, tiny_manifest, audio=directory)
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: corrupt audio" in err and "bug in speechport" not in err, err


def test_calibration_section_takes_audio_too(tmp_path: Path, tiny_manifest: dict, speech_dir: tuple[Path, Path]) -> None:
    from pipeline.manifest import load_manifest
    from pipeline.plan import plan

    directory, _ = speech_dir
    tiny_manifest["backends"] = {"litert": ["int8"]}
    tiny_manifest["calibration"] = {"audio": str(directory / "*.wav"), "max_samples": 100}
    graph = plan(load_manifest(write_manifest(tmp_path / "m.yaml", **tiny_manifest)))
    data = graph.nodes["calibrate@20ms"].config.data
    assert data.split == AUDIO_SPLIT and data.audio == directory / "*.wav" and data.transcripts is None
    assert len(load_utterances(data)) == 3  # the fit part: every 4th file is held out for judging a quantization


def test_editing_one_audio_file_changes_the_keys_that_stream_it(tmp_path: Path, tiny_manifest: dict, speech_dir: tuple[Path, Path]) -> None:
    from pipeline.dag import key_document, key_of
    from pipeline.manifest import load_manifest
    from pipeline.plan import plan

    directory, tsv = speech_dir
    path = _audio_manifest(tmp_path, tiny_manifest, audio=directory, transcripts=tsv)

    def keys() -> dict[str, str]:
        graph = plan(load_manifest(path))
        return {node_id: key_of(key_document(node, {role: "upstream" for role, _ in node.inputs})) for node_id, node in graph.nodes.items()}

    before = keys()
    assert keys() == before
    with sf.SoundFile(str(directory / "utt0.wav"), "r+") as f:  # one sample of one file
        f.seek(1000)
        f.write(np.array([0.25], np.float32))
    after = keys()
    changed = sorted(n for n in before if before[n] != after[n])
    assert changed == ["reference-noisy@20ms", "reference@20ms", "verify-noisy:onnxruntime-fp32@20ms", "verify:onnxruntime-fp32@20ms"], changed
