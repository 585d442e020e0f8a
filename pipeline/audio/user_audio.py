"""A user's own audio: a directory (searched recursively) or a glob of WAV/FLAC files at any sample
rate, mono or multichannel, with optional transcripts in a TSV. speechport makes the index itself.

    transcripts.tsv        file<TAB>text          (optional header line; blank lines ignored)
                           a.wav<TAB>hello world  (a path relative to the audio directory,
                           sub/b<TAB>good night    that path without its extension, a name or a stem)

Audio is downmixed by the mean of its channels and resampled to 16 kHz with soxr; a file with no
transcript line has no ground truth (CER is scored over the files that have one), and no file has
labelled speech regions. Every problem is a UserError naming the file, and the line for the TSV.
"""

from __future__ import annotations

import glob
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.audio.corpus import SAMPLE_RATE, Utterance
from pipeline.errors import UserError

if TYPE_CHECKING:
    import soundfile

AUDIO_SUFFIXES = (".wav", ".flac")
# libsndfile's names for the containers accepted: anything else it can decode (MP3, raw) is refused,
# so random bytes that happen to parse as an MPEG stream are not taken for speech
_FORMATS = {"WAV", "WAVEX", "RF64", "W64", "FLAC"}
SOXR_QUALITY = "HQ"
_GLOB_CHARS = re.compile(r"[*?\[]")
_HEADER = ("file", "text")


@dataclass(frozen=True)
class AudioFile:
    path: Path
    name: str  # posix path relative to the audio root: the utterance id
    transcript: str | None  # normalized text; None: no transcript line names this file


@dataclass(frozen=True)
class AudioSet:
    root: Path  # the directory, or a glob's fixed leading directories
    files: tuple[AudioFile, ...]


def resampling_settings() -> dict[str, object]:
    """What turns a file's bytes into the samples streamed; part of the content digest."""
    import importlib.metadata

    return {"sample_rate": SAMPLE_RATE, "resampler": "soxr", "soxr": importlib.metadata.version("soxr"),
            "quality": SOXR_QUALITY, "downmix": "mean", "clip": [-1.0, 1.0]}


def find_audio_files(pattern: Path) -> tuple[Path, list[Path]]:
    """(root, files): every *.wav / *.flac under a directory, or the files a glob matches, sorted by name."""
    text = str(pattern)
    if not _GLOB_CHARS.search(text):
        if pattern.is_file():
            root, files = pattern.parent, [pattern]
        elif pattern.is_dir():
            root = pattern
            # hidden files and directories (".git", macOS "._a.wav" forks) are not the user's speech
            files = [p for p in pattern.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                     and not any(part.startswith(".") for part in p.relative_to(pattern).parts)]
        else:
            raise UserError(f"audio directory {pattern} not found", where=str(pattern),
                            hint="give a directory of WAV/FLAC files or a glob such as data/*.wav")
        if not files:
            raise UserError(f"no WAV or FLAC files in directory {pattern} (searched recursively)", where=str(pattern))
    else:
        fixed = []
        for part in pattern.parts:
            if _GLOB_CHARS.search(part):
                break
            fixed.append(part)
        root = Path(*fixed) if fixed else Path(".")
        files = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
        if not files:
            raise UserError(f"glob {text} matches no file", where=text)
    return root, sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _aliases(name: str) -> tuple[str, str, str, str]:
    """How a TSV line may name a file, most specific first: relative path, without extension, name, stem."""
    path = Path(name)
    return name, path.with_suffix("").as_posix(), path.name, path.stem


def read_transcripts(tsv: Path, names: list[str]) -> dict[str, str]:
    """Relative file name -> normalized transcript, for every line of `tsv`; each line must name one of `names`."""
    from pipeline.audio.ctc import normalize_text

    if not tsv.is_file():
        raise UserError(f"transcripts file {tsv} not found", where=str(tsv))
    try:
        lines = tsv.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        line = tsv.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(f"expected UTF-8 text, found byte {exc.object[exc.start]:#04x}", where=f"{tsv}:{line}") from None
    tiers: list[dict[str, list[str]]] = [{} for _ in range(4)]  # per kind of alias: alias -> names it could mean
    for name in names:
        for tier, alias in zip(tiers, _aliases(name)):
            tier.setdefault(alias, []).append(name)
    transcripts: dict[str, str] = {}
    line_of: dict[str, int] = {}
    first = True
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise UserError(f"expected file_name<TAB>text, found no tab in {line!r}", where=f"{tsv}:{number}")
        key, text = line.split("\t", 1)
        key = Path(key.strip()).as_posix() if key.strip() else ""  # "./a.wav" is "a.wav"
        if first and (key.lower(), text.strip().lower()) == _HEADER:
            first = False
            continue
        first = False
        if not key:
            raise UserError("expected a file name before the tab, found nothing", where=f"{tsv}:{number}")
        name = _resolve_name(key, tiers, f"{tsv}:{number}")
        if name in transcripts:
            raise UserError(f"second transcript for {name} (the first is on line {line_of[name]})", where=f"{tsv}:{number}")
        transcripts[name], line_of[name] = normalize_text(text), number
    return transcripts


def _resolve_name(key: str, tiers: list[dict[str, list[str]]], where: str) -> str:
    import difflib

    for tier in tiers:
        matches = tier.get(key)
        if matches and len(matches) == 1:
            return matches[0]
        if matches:
            raise UserError(f"{key!r} could name any of {matches}; give the path relative to the audio directory",
                            where=where)
    close = difflib.get_close_matches(key, list(tiers[0]), n=1)
    raise UserError(f"{key!r} names no audio file in the audio set", where=where,
                    hint=f"did you mean {close[0]!r}?" if close else "file names are relative to the audio directory")


def _truncation(path: Path) -> str | None:
    """What is missing from a RIFF/WAVE file whose data chunk is shorter than its header says, else None.

    libsndfile reads such a file without complaint, returning only the samples present.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # not plain RIFF (RF64, W64, FLAC): libsndfile's own checks apply
        size = path.stat().st_size
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                available = size - offset - 8
                # 0 and 0xFFFFFFFF are the placeholders of writers that stream to a pipe
                if length not in (0, 0xFFFFFFFF) and length > available:
                    return f"its data chunk declares {length} bytes, the file holds {available}"
                return None
            offset += 8 + length + (length & 1)
    return None


def _open_checked(path: Path) -> "soundfile.SoundFile":
    """An open soundfile.SoundFile of a WAV/FLAC file, or a UserError saying why not."""
    import soundfile as sf

    try:
        handle = sf.SoundFile(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        reason = str(exc).replace(f"Error opening {str(path)!r}: ", "")
        raise UserError(f"expected a readable WAV or FLAC file, found one libsndfile cannot open ({reason})",
                        where=str(path)) from None
    if handle.format not in _FORMATS:
        handle.close()
        raise UserError(f"expected a WAV or FLAC file, found {handle.format} ({handle.format_info})", where=str(path))
    if handle.frames == 0:
        handle.close()
        raise UserError("expected audio, found a file with zero samples", where=str(path))
    truncated = _truncation(path)
    if truncated:
        handle.close()
        raise UserError(f"truncated WAV file: {truncated}", where=str(path))
    return handle


def check_audio_file(path: Path) -> None:
    """Header checks only (format, length, truncation): cheap enough to run when planning."""
    _open_checked(path).close()


def read_audio_file(path: Path) -> np.ndarray:
    """16 kHz mono float32 in [-1, 1]: channels averaged, resampled with soxr."""
    import soxr

    with _open_checked(path) as handle:
        rate = handle.samplerate
        try:
            audio = handle.read(dtype="float32", always_2d=True)
        except Exception as exc:
            raise UserError(f"corrupt audio: decoding failed after the header ({exc})", where=str(path)) from None
    if len(audio) == 0:
        raise UserError("expected audio, found a file with zero samples", where=str(path))
    if not np.isfinite(audio).all():
        raise UserError("expected finite samples, found NaN or infinity", where=str(path))
    mono = audio.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality=SOXR_QUALITY)
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def scan_audio(pattern: Path, transcripts: Path | None) -> AudioSet:
    """The files of an audio set with their transcripts, each header checked; no samples decoded."""
    root, paths = find_audio_files(pattern)
    names = [p.relative_to(root).as_posix() for p in paths]
    for path in paths:
        check_audio_file(path)
    texts = read_transcripts(transcripts, names) if transcripts is not None else {}
    return AudioSet(root, tuple(AudioFile(p, n, texts.get(n)) for p, n in zip(paths, names)))


def audio_digest(audio_set: AudioSet) -> str:
    """SHA-256 over every file's relative name and bytes, the transcripts and the resampling settings."""
    from pipeline.cache import canonical_json, sha256_file, sha256_text

    document = {
        "files": {f.name: sha256_file(f.path) for f in audio_set.files},
        "transcripts": {f.name: f.transcript for f in audio_set.files if f.transcript is not None},
        "resampling": resampling_settings(),
    }
    return sha256_text(canonical_json(document))


def load_audio(audio_set: AudioSet) -> list[Utterance]:
    """One utterance per file, in name order; no speech regions (speech=None), text "" without a transcript."""
    return [
        Utterance(id=f.name, text=f.transcript or "", audio=read_audio_file(f.path), speech=None,
                  transcribed=f.transcript is not None)
        for f in audio_set.files
    ]
