"""The speech corpus on disk: a split directory of 16 kHz mono FLAC files and an `index.json`.

    <corpus_dir>/<split>/index.json
    {"schema": 1, "sample_rate": 16000,
     "utterances": [{"id": str, "file": "relative.flac", "text": str, "voice": str,
                     "rate": int, "pitch": int, "seconds": float,
                     "speech": [[start_sample, end_sample], ...]}]}

`text` is the ground-truth transcript ("" for a noise/silence-only utterance), using only the
characters of VOCABULARY; `speech` are the speech regions, half-open sample ranges. The
committed corpus lives in `models/corpus/` (made by `python -m models.corpus.synthesize`); the
large training set is written to `artifacts/corpus-train/`, i.e. `load_split(Path("artifacts"),
"corpus-train")`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import InternalError, UserError

# Mirrors models.common.VOCABULARY and pipeline.spec.SAMPLE_RATE (not imported: those modules
# pull in torch and pydantic); tests/audio/test_corpus.py checks they agree.
VOCABULARY = " 'abcdefghijklmnopqrstuvwxyz"
SAMPLE_RATE = 16_000
INDEX_SCHEMA = 1


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str  # ground truth, "" for silence/noise (and for audio without a transcript)
    audio: np.ndarray = field(repr=False, compare=False)  # float32 in [-1, 1], 16 kHz mono
    speech: tuple[tuple[int, int], ...] | None = ()  # speech regions in samples, [start, end); None: not labelled
    transcribed: bool = True  # False: `text` is no ground truth (a user's file without a transcript line)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def _read_index(corpus_dir: Path, split: str) -> tuple[Path, list[dict]]:
    split_dir = Path(corpus_dir) / split
    if not split_dir.is_dir():
        raise UserError(
            f"corpus split {split!r} not found: expected a directory, found "
            + ("a file" if split_dir.exists() else "nothing"),
            where=str(split_dir),
            hint="python -m models.corpus.synthesize regenerates the committed corpus",
        )
    index_path = split_dir / "index.json"
    if not index_path.is_file():
        raise UserError("missing corpus index: expected index.json in the split directory, found nothing",
                        where=str(index_path))
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"expected valid JSON, found a syntax error: {exc}", where=str(index_path)) from None
    if not isinstance(index, dict):
        raise UserError(f"expected a JSON object, found {type(index).__name__}", where=str(index_path))
    if index.get("schema") != INDEX_SCHEMA:
        raise UserError(f"expected schema {INDEX_SCHEMA}, found {index.get('schema')!r}", where=f"{index_path}: schema")
    if index.get("sample_rate") != SAMPLE_RATE:
        raise UserError(f"expected sample_rate {SAMPLE_RATE}, found {index.get('sample_rate')!r}",
                        where=f"{index_path}: sample_rate")
    utterances = index.get("utterances")
    if not isinstance(utterances, list):
        raise UserError(f"expected a list, found {type(utterances).__name__}", where=f"{index_path}: utterances")
    for i, entry in enumerate(utterances):
        _check_entry(entry, f"{index_path}: utterances[{i}]")
    return index_path, utterances


_FIELDS = {"id": str, "file": str, "text": str}


def _check_entry(entry: object, where: str) -> None:
    if not isinstance(entry, dict):
        raise UserError(f"expected an object, found {type(entry).__name__}", where=where)
    for name, kind in _FIELDS.items():
        if not isinstance(entry.get(name), kind):
            found = "nothing" if name not in entry else type(entry[name]).__name__
            raise UserError(f"expected a {kind.__name__}, found {found}", where=f"{where}.{name}")
    bad = sorted({ch for ch in entry["text"] if ch not in VOCABULARY})
    if bad:
        raise UserError(
            f"transcript {entry['text']!r} has characters outside the vocabulary {VOCABULARY!r}: "
            + ", ".join(repr(ch) for ch in bad),
            where=f"{where}.text",
        )
    file = entry["file"]
    if not file or Path(file).is_absolute() or ".." in Path(file).parts:
        raise UserError(f"expected a file name relative to the split directory, found {file!r}", where=f"{where}.file")
    speech = entry.get("speech", [])
    if not isinstance(speech, list) or not all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
        and 0 <= r[0] < r[1] for r in speech
    ):
        raise UserError(f"expected a list of [start, end] sample pairs with 0 <= start < end, found {speech!r}",
                        where=f"{where}.speech")


def _read_audio(path: Path, where: str) -> np.ndarray:
    import soundfile as sf

    if not path.is_file():
        raise UserError(f"audio file {path} not found", where=where)
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        raise UserError(f"expected a readable audio file (FLAC or WAV), found: {exc}", where=str(path)) from None
    if rate != SAMPLE_RATE:
        raise UserError(f"expected sample rate {SAMPLE_RATE} Hz, found {rate} Hz", where=str(path),
                        hint="resample: sox IN -r 16000 -c 1 -b 16 OUT.flac")
    if audio.shape[1] != 1:
        raise UserError(f"expected mono audio, found {audio.shape[1]} channels", where=str(path),
                        hint="downmix: sox IN -c 1 OUT.flac")
    return np.ascontiguousarray(audio[:, 0])


def load_split(corpus_dir: Path, split: str) -> list[Utterance]:
    """Every utterance of `<corpus_dir>/<split>`, in index order, audio decoded to float32."""
    index_path, entries = _read_index(corpus_dir, split)
    utterances = []
    for i, entry in enumerate(entries):
        where = f"{index_path}: utterances[{i}]"
        audio = _read_audio(index_path.parent / entry["file"], f"{where}.file")
        speech = tuple((int(s), int(e)) for s, e in entry.get("speech", []))
        if speech and speech[-1][1] > len(audio):
            raise UserError(
                f"speech region {list(speech[-1])} ends after the audio ({len(audio)} samples in {entry['file']})",
                where=f"{where}.speech",
            )
        utterances.append(Utterance(id=entry["id"], text=entry["text"], audio=audio, speech=speech))
    return utterances


def split_files(corpus_dir: Path, split: str) -> list[Path]:
    """index.json and every audio file it names, sorted: what a content hash of the split covers."""
    index_path, entries = _read_index(corpus_dir, split)
    files = {index_path}
    for i, entry in enumerate(entries):
        path = index_path.parent / entry["file"]
        if not path.is_file():
            raise UserError(f"audio file {path} not found", where=f"{index_path}: utterances[{i}].file")
        files.add(path)
    return sorted(files)


def speech_mask(utterance: Utterance) -> np.ndarray:
    """One bool per sample: True inside a speech region."""
    if utterance.speech is None:
        raise InternalError(f"speech_mask of utterance {utterance.id}, which has no labelled speech regions")
    mask = np.zeros(len(utterance.audio), dtype=bool)
    for start, end in utterance.speech:
        mask[start:end] = True
    return mask
