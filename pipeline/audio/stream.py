"""A split's utterances streamed back to back, as the chunk inputs a device would compute."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.audio.corpus import load_split, speech_mask
from pipeline.audio.frontend import stream_chunks
from pipeline.cache import digest_files
from pipeline.dag import StageConfig
from pipeline.errors import UserError
from pipeline.spec import InputSpec, StreamSpec


class StreamData(StageConfig):
    """The speech streamed, identified by content; the path is only where to read it."""

    split: str = Field(description="Corpus split streamed back to back.")
    split_sha256: str = Field(description="Digest of the split's index and audio files.")
    max_seconds: float | None = Field(description="Audio streamed, None for the whole split.")
    corpus: Path = Field(exclude=True, description="Corpus directory (not part of the key).")


@dataclass(frozen=True)
class SpeechStream:
    audio: np.ndarray  # float32, the whole split back to back
    text: str  # ground truth, utterances joined by a space
    speech: np.ndarray  # bool per sample
    chunks: list[dict[str, np.ndarray]]  # chunk input name -> value, in the contract's shape

    @property
    def seconds(self) -> float:
        return len(self.audio) / 16_000


def split_digest(corpus_dir: Path, split: str) -> str:
    from pipeline.audio.corpus import split_files

    return digest_files(split_files(corpus_dir, split), Path(corpus_dir) / split)


def speech_stream(corpus_dir: Path, split: str, spec: StreamSpec, max_seconds: float | None = None) -> SpeechStream:
    if len(spec.inputs) != 1:
        raise UserError(
            f"the {spec.frontend.kind} frontend feeds one chunk input, the model declares {len(spec.inputs)}",
            where="io.inputs",
        )
    utterances = load_split(corpus_dir, split)
    audio = np.concatenate([u.audio for u in utterances]).astype(np.float32)
    speech = np.concatenate([speech_mask(u) for u in utterances])
    text = " ".join(u.text for u in utterances if u.text)
    if max_seconds is not None:
        keep = int(max_seconds * spec.frontend.sample_rate)
        # cut at an utterance boundary so the ground-truth transcript stays exact
        ends = np.cumsum([len(u.audio) for u in utterances])
        count = max(1, int(np.searchsorted(ends, keep, side="right")))
        audio, speech = audio[: ends[count - 1]], speech[: ends[count - 1]]
        text = " ".join(u.text for u in utterances[:count] if u.text)
    target = spec.inputs[0]
    chunks = [{target.name: to_input_layout(c, target)} for c in stream_chunks(audio, spec.frontend, spec.chunk_samples)]
    return SpeechStream(audio=audio, text=text, speech=speech, chunks=chunks)


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
