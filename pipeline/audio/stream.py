"""A data section's utterances (a corpus split or a user's audio files) streamed back to back, as the
chunk inputs a device would compute."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.audio.corpus import Utterance, load_split, speech_mask
from pipeline.audio.frontend import stream_chunks
from pipeline.cache import digest_files
from pipeline.dag import StageConfig
from pipeline.errors import InternalError, UserError
from pipeline.spec import InputSpec, StreamSpec

AUDIO_SPLIT = "audio"  # StreamData.split of a user's own audio files


class StreamData(StageConfig):
    """The speech streamed, identified by content; the paths are only where to read it.

    Either a corpus split (`corpus`, `split`) or a user's own audio files (`audio`, optional
    `transcripts`, split "audio"). Make one with `stream_data`, which computes the digest.
    """

    split: str = Field(description=f"Corpus split streamed back to back, or {AUDIO_SPLIT!r} for a user's own audio files.")
    split_sha256: str = Field(
        description="Digest of the content: the split's index and audio files, or the audio files' names and bytes, "
        "their transcripts and the resampling settings."
    )
    max_seconds: float | None = Field(description="Audio streamed, None for the whole split.")
    corpus: Path | None = Field(None, exclude=True, description="Corpus directory (not part of the key).")
    audio: Path | None = Field(None, exclude=True, description="Directory or glob of WAV/FLAC files (not part of the key).")
    transcripts: Path | None = Field(None, exclude=True, description="TSV of file<TAB>text lines (not part of the key).")
    part: Literal["all", "fit", "held_out"] = Field(
        "all",
        description="Which utterances: all; 'held_out', those whose position in the split is held_out_every - 1 modulo "
        "held_out_every; 'fit', the others. Interleaved, so both parts sample the whole split.",
    )
    held_out_every: int = Field(4, ge=2, description="One utterance in this many is held out (see `part`).")
    condition: Literal["clean", "noisy"] = Field(
        "clean", description="'noisy': each utterance of the part in a room and in noise (pipeline.audio.augment.noisy_copy)."
    )
    augment_seed: int = Field(0, ge=0, description="Seed of the noisy copy and of calibration copies (pipeline.audio.augment).")
    augment_version: str | None = Field(
        None,
        description="pipeline.audio.augment.AUGMENT_VERSION for a noisy stream (filled in), so a change to the copies "
        "rebuilds what streamed them; None for clean speech, whose key it leaves alone.",
    )

    @model_validator(mode="before")
    @classmethod
    def _augment_version(cls, values: object) -> object:
        if isinstance(values, dict) and values.get("condition") == "noisy" and values.get("augment_version") is None:
            from pipeline.audio.augment import AUGMENT_VERSION

            values = {**values, "augment_version": AUGMENT_VERSION}
        return values

    def replaced(self, **changes: object) -> StreamData:
        """This data with `changes` (e.g. condition="noisy"), validated; the paths kept. (model_copy skips validation.)"""
        values = {k: v for k, v in self.__dict__.items() if k != "augment_version" or "condition" not in changes}
        return type(self).model_validate(values | changes)


@dataclass(frozen=True)
class SpeechStream:
    audio: np.ndarray  # float32, the whole split back to back
    text: str  # ground truth of the utterances that have one, joined by a space
    speech: np.ndarray | None  # bool per sample; None: the audio has no labelled speech regions
    scored: np.ndarray  # bool per sample: inside an utterance whose transcript is ground truth
    chunks: list[dict[str, np.ndarray]]  # chunk input name -> value, in the contract's shape

    @property
    def seconds(self) -> float:
        return len(self.audio) / 16_000


def split_digest(corpus_dir: Path, split: str) -> str:
    from pipeline.audio.corpus import split_files

    return digest_files(split_files(corpus_dir, split), Path(corpus_dir) / split)


def stream_data(
    *,
    max_seconds: float | None,
    corpus: Path | None = None,
    split: str | None = None,
    audio: Path | None = None,
    transcripts: Path | None = None,
    part: Literal["all", "fit", "held_out"] = "all",
    held_out_every: int = 4,
    condition: Literal["clean", "noisy"] = "clean",
    augment_seed: int = 0,
) -> StreamData:
    """A data section, identified by the digest of its content; a user's audio is header-checked here.

    `part`, `held_out_every`, `condition` and `augment_seed` choose what of it streams, as the StreamData fields say.
    """
    selection = {"part": part, "held_out_every": held_out_every, "condition": condition, "augment_seed": augment_seed}
    if (corpus is None) == (audio is None):
        raise InternalError(f"stream_data needs exactly one of corpus and audio, got corpus={corpus} audio={audio}")
    if corpus is not None:
        if split is None:
            raise InternalError("stream_data of a corpus needs its split")
        return StreamData(split=split, split_sha256=split_digest(corpus, split), max_seconds=max_seconds, corpus=corpus, **selection)
    from pipeline.audio.user_audio import audio_digest, scan_audio

    digest = audio_digest(scan_audio(audio, transcripts))
    return StreamData(split=AUDIO_SPLIT, split_sha256=digest, max_seconds=max_seconds, audio=audio, transcripts=transcripts, **selection)


def source_utterances(data: StreamData) -> list[Utterance]:
    """Every utterance of the data section, in split order: a corpus split's, or one per audio file."""
    if data.corpus is not None:
        return load_split(data.corpus, data.split)
    if data.audio is None:
        raise InternalError(f"StreamData names neither a corpus nor audio files: {data!r}")
    from pipeline.audio.user_audio import load_audio, scan_audio

    return load_audio(scan_audio(data.audio, data.transcripts))


def part_positions(count: int, part: str, held_out_every: int) -> list[int]:
    """Split positions of a part: 'held_out' every held_out_every-th (the last of each run), 'fit' the rest, 'all' all."""
    if part == "all":
        return list(range(count))
    held_out = [i % held_out_every == held_out_every - 1 for i in range(count)]
    if part not in ("fit", "held_out"):
        raise InternalError(f"unknown part {part!r}: expected 'all', 'fit' or 'held_out'")
    return [i for i in range(count) if held_out[i] == (part == "held_out")]


def part_utterances(data: StreamData) -> list[tuple[int, Utterance]]:
    """(split position, clean utterance) of the part `data` streams, in stream order."""
    utterances = source_utterances(data)
    positions = part_positions(len(utterances), data.part, data.held_out_every)
    if not positions:
        raise UserError(
            f"the {data.part!r} part of split {data.split!r} is empty: it has {len(utterances)} utterances and holds out "
            f"every {data.held_out_every}th",
            where=data.split,
            hint="lower held_out_every or add utterances",
        )
    return [(i, utterances[i]) for i in positions]


def with_condition(data: StreamData, indexed: Sequence[tuple[int, Utterance]]) -> list[Utterance]:
    """The part's utterances as `data.condition` says they sound."""
    if data.condition == "clean":
        return [u for _, u in indexed]
    from pipeline.audio.augment import noisy_copy

    return noisy_copy(indexed, data.augment_seed)


def load_utterances(data: StreamData) -> list[Utterance]:
    """The utterances of a data section in stream order: its part, then its condition."""
    return with_condition(data, part_utterances(data))


def speech_stream(data: StreamData, spec: StreamSpec) -> SpeechStream:
    """The data section's utterances back to back (cut to `data.max_seconds`) and the chunks a device computes."""
    return utterance_stream(load_utterances(data), spec, data.max_seconds)


def utterance_stream(utterances: Sequence[Utterance], spec: StreamSpec, max_seconds: float | None) -> SpeechStream:
    """Utterances back to back (cut at an utterance boundary to `max_seconds`) and the chunks a device computes."""
    if len(spec.inputs) != 1:
        raise UserError(
            f"the {spec.frontend.kind} frontend feeds one chunk input, the model declares {len(spec.inputs)}",
            where="io.inputs",
        )
    utterances = list(utterances)
    if max_seconds is not None:
        keep = int(max_seconds * spec.frontend.sample_rate)
        # cut at an utterance boundary so the ground-truth transcript stays exact
        ends = np.cumsum([len(u.audio) for u in utterances])
        utterances = utterances[: max(1, int(np.searchsorted(ends, keep, side="right")))]
    audio = np.concatenate([u.audio for u in utterances]).astype(np.float32)
    labelled = all(u.speech is not None for u in utterances)
    speech = np.concatenate([speech_mask(u) for u in utterances]) if labelled else None
    scored = np.concatenate([np.full(len(u.audio), u.transcribed) for u in utterances])
    text = " ".join(u.text for u in utterances if u.transcribed and u.text)
    target = spec.inputs[0]
    chunks = [{target.name: to_input_layout(c, target)} for c in stream_chunks(audio, spec.frontend, spec.chunk_samples)]
    return SpeechStream(audio=audio, text=text, speech=speech, scored=scored, chunks=chunks)


def truth_cer(stream: SpeechStream, logits: np.ndarray, vocabulary: str, blank: int, samples_per_frame: int) -> float | None:
    """CER against the ground truth of the greedy transcript of `logits` [T, C], over the utterances
    that have a transcript (each run of their frames decoded on its own); None if none has one."""
    from pipeline.audio.ctc import cer, ctc_greedy

    if not stream.scored.any():
        return None
    keep = frame_labels(stream.scored, len(logits), samples_per_frame)
    if keep.all():
        return cer(stream.text, ctc_greedy(logits, vocabulary, blank))
    edges = np.flatnonzero(np.diff(np.concatenate([[False], keep, [False]]).astype(np.int8)))
    pieces = [ctc_greedy(logits[start:end], vocabulary, blank) for start, end in zip(edges[::2], edges[1::2])]
    return cer(stream.text, " ".join(pieces))


def to_input_layout(chunk: np.ndarray, target: InputSpec) -> np.ndarray:
    """A frontend chunk ([frames, features], or [samples]) in the model's declared input layout.

    Frames go to the input's `time_axis` and features to its one other axis longer than 1, so a model
    taking [1, frames, mels], [1, mels, frames] or [frames, mels] gets what it declared.
    """
    shape, rank = tuple(target.shape), len(target.shape)
    if chunk.ndim == 1 or chunk.size != int(np.prod(shape)):
        return chunk.reshape(shape)
    frames, features = chunk.shape
    feature_axes = [a for a in range(rank) if a != target.time_axis and shape[a] != 1]
    if shape[target.time_axis] != frames or len(feature_axes) != 1 or shape[feature_axes[0]] != features:
        raise UserError(
            f"input {target.name!r} declares shape {list(shape)} with time_axis {target.time_axis}; the frontend gives "
            f"{frames} frames of {features} features per chunk",
            where="io.inputs",
            hint="put the frames on time_axis and the features on one other axis",
        )
    expanded = chunk.reshape(frames, features, *([1] * (rank - 2)))
    return np.ascontiguousarray(np.moveaxis(expanded, [0, 1], [target.time_axis, feature_axes[0]]).reshape(shape))


def frame_labels(speech: np.ndarray, frames: int, hop: int) -> np.ndarray:
    """Speech/non-speech label per output frame: the majority over the samples frame i adds."""
    usable = speech[: frames * hop].reshape(frames, hop)
    return usable.mean(axis=1) >= 0.5
