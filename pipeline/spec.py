"""The streaming I/O of a model: the single description every stage, runtime and contract reads.

A model in `models/` returns a `StreamSpec` from `streaming_spec(chunk_ms)` (or, for a model that
counts its chunk in samples, `streaming_spec(chunk_samples=...)`); a manifest may declare the same
structure explicitly under `io` (a user's own model), and the trace stage checks that the model
really produces what is declared.

A chunk is `chunk_samples` long: that count is what an app reads from the microphone and what every
stage uses. `chunk_ms` is derived from it (1000 * chunk_samples / sample_rate, a float: 512 samples
at 16 kHz are 32.0 ms, 500 are 31.25 ms); a spec may be written with either, and a dumped spec
(a contract) carries both.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, computed_field, model_validator

SAMPLE_RATE = 16_000
FRAME_HOP_MS = 10

DType = Literal["float32", "int64", "int32"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogMelFrontend(Strict):
    """Log-mel frames computed on the device, from raw 16 kHz PCM, before the model is called."""

    kind: Literal["logmel"] = Field("logmel", description="Feature frontend: 80-bin log-mel frames.")
    sample_rate: int = Field(SAMPLE_RATE, description="Audio sample rate in Hz.")
    n_fft: int = Field(512, description="FFT size in samples (window zero-padded to this).")
    win_length: int = Field(400, description="Analysis window length in samples (25 ms, Hann).")
    hop_length: int = Field(160, description="Hop between frames in samples (10 ms).")
    n_mels: int = Field(80, description="Number of mel bins.")
    f_min: float = Field(20.0, description="Lowest mel filter edge in Hz.")
    f_max: float = Field(7600.0, description="Highest mel filter edge in Hz.")
    log_floor: float = Field(1e-6, description="Added to mel energy before the natural log.")


class PcmFrontend(Strict):
    """No frontend: the model takes raw PCM samples (scaled to [-1, 1]) itself."""

    kind: Literal["pcm"] = Field("pcm", description="Feature frontend: none, raw float PCM in [-1, 1].")
    sample_rate: int = Field(SAMPLE_RATE, description="Audio sample rate in Hz.")


Frontend = Annotated[Union[LogMelFrontend, PcmFrontend], Field(discriminator="kind")]


class InputSpec(Strict):
    name: str = Field(description="Graph input name of the audio chunk (features or PCM).")
    shape: tuple[int, ...] = Field(description="Static shape of one chunk, batch 1 first.")
    dtype: DType = Field("float32", description="Element type.")
    time_axis: int = Field(1, description="Axis along which consecutive chunks concatenate into the batch input.")


class StateSpec(Strict):
    input: str = Field(description="Graph input that receives the state on each call.")
    output: str = Field(description="Graph output whose value is fed back into `input` on the next call.")
    shape: tuple[int, ...] = Field(description="Static shape of the state tensor.")
    dtype: DType = Field("float32", description="Element type.")
    init: float = Field(0.0, description="Value every element holds before the first call.")


OutputKind = Literal["ctc_logits", "decision_logits", "probability", "tensor"]
DECISION_KINDS = ("decision_logits", "probability")  # outputs verification judges by their per-frame decisions too


class OutputSpec(Strict):
    name: str = Field(description="Graph output name.")
    shape: tuple[int, ...] = Field(description="Static shape of the output for one chunk.")
    dtype: DType = Field("float32", description="Element type.")
    time_axis: int = Field(1, description="Axis along which per-chunk outputs concatenate into the batch output.")
    kind: OutputKind = Field(
        "tensor",
        description="How verification judges the output, besides its error: CTC transcript (`ctc_logits`, classes on "
        "the last axis), arg-max decision per frame (`decision_logits`, classes on the last axis), decision at "
        "`threshold` per frame (`probability`: values in [0, 1], one per frame, e.g. a sigmoid VAD output of shape "
        "[1, 1], [frames] or [frames, 1]), or error only (`tensor`).",
    )
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="probability only (default 0.5): a frame is positive where the value p >= threshold.",
    )
    positive_classes: tuple[int, ...] | None = Field(
        None,
        min_length=1,
        description="decision_logits only: classes whose arg-max counts as a positive decision (e.g. every kind of "
        "speech); verification then also reports agreement on that binary decision. None: no binary decision.",
    )

    @model_validator(mode="before")
    @classmethod
    def _probability_threshold(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "probability" and data.get("threshold") is None:
            return {**data, "threshold": 0.5}
        return data

    @model_validator(mode="after")
    def _kind_fields(self) -> "OutputSpec":
        if self.threshold is not None and self.kind != "probability":
            raise ValueError(f"output {self.name!r}: threshold applies to kind 'probability' only, the output is {self.kind!r}")
        if self.positive_classes is not None:
            if self.kind != "decision_logits":
                raise ValueError(f"output {self.name!r}: positive_classes applies to kind 'decision_logits' only, the output is {self.kind!r}")
            classes = self.shape[-1] if self.shape else 1
            outside = [c for c in self.positive_classes if not 0 <= c < classes]
            if outside:
                raise ValueError(f"output {self.name!r}: positive_classes {outside} are not classes of its last axis: expected 0..{classes - 1}")
            if len(set(self.positive_classes)) != len(self.positive_classes):
                raise ValueError(f"output {self.name!r}: positive_classes repeat: {list(self.positive_classes)}")
            if len(self.positive_classes) == classes:
                raise ValueError(f"output {self.name!r}: positive_classes lists all {classes} classes, so every frame would be positive")
        if self.kind == "probability":
            if not 0 <= self.time_axis < max(1, len(self.shape)):
                raise ValueError(f"output {self.name!r}: time_axis {self.time_axis} is not an axis of shape {list(self.shape)}")
            extra_axes = [n for axis, n in enumerate(self.shape) if axis != self.time_axis and n != 1]
            if extra_axes:
                raise ValueError(
                    f"output {self.name!r}: a probability holds one value per frame: expected size 1 on every axis but "
                    f"time_axis {self.time_axis}, got shape {list(self.shape)}"
                )
        return self

    @property
    def decision_rule(self) -> str:
        """How a frame's decision is taken, in words (for reports)."""
        if self.kind == "probability":
            return f"p >= {self.threshold:g}"
        if self.positive_classes is not None:
            return f"arg-max; positive: classes {list(self.positive_classes)}"
        return "arg-max"


class CtcDecoder(Strict):
    kind: Literal["ctc_greedy"] = Field("ctc_greedy", description="Greedy CTC decoding of the `ctc_logits` output.")
    vocabulary: str = Field(description="Characters of the output classes after the blank, in class order.")
    blank: int = Field(0, description="Class index of the CTC blank.")


class DecisionDecoder(Strict):
    kind: Literal["decision"] = Field(
        "decision", description="Per-frame decisions: arg-max class of `decision_logits` outputs, threshold of `probability` ones."
    )
    classes: tuple[str, ...] = Field(
        description="Class names in output order, e.g. ('silence', 'speech'); for a `probability` output, with two "
        "names: (below the threshold, at or above it)."
    )


Decoder = Annotated[Union[CtcDecoder, DecisionDecoder], Field(discriminator="kind")]


def format_ms(ms: float) -> str:
    """20.0 -> '20', 31.25 -> '31.25': milliseconds as written, without a spurious '.0'."""
    return f"{ms:g}" if float(ms).is_integer() else repr(float(ms))


def _frontend_of(data: dict) -> LogMelFrontend | PcmFrontend | None:
    frontend = data.get("frontend")
    if isinstance(frontend, (LogMelFrontend, PcmFrontend)):
        return frontend
    try:
        return TypeAdapter(Frontend).validate_python(frontend)
    except ValidationError:
        return None  # field validation reports it


def chunk_samples_from(data: dict) -> dict:
    """A spec document written with chunk_ms, chunk_samples or both -> one with chunk_samples only, checked.

    The checks name the field the document used, with what was expected and what it got.
    """
    frontend = _frontend_of(data)
    rate = SAMPLE_RATE if frontend is None else frontend.sample_rate  # an invalid frontend is reported by its own field
    ms, samples = data.get("chunk_ms"), data.get("chunk_samples")
    if ms is None and samples is None:
        raise ValueError("the chunk length is missing: give chunk_samples (e.g. 512) or chunk_ms (e.g. 20)")
    if samples is None:
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not ms > 0:
            raise ValueError(f"chunk_ms: expected a positive number of milliseconds, got {ms!r}")
        exact = Fraction(ms) * rate / 1000
        if exact.denominator != 1:
            raise ValueError(f"chunk_ms: {format_ms(ms)} ms is {float(exact):g} samples at {rate} Hz, not a whole number of samples")
        samples, field = int(exact), "chunk_ms"
    else:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0:
            raise ValueError(f"chunk_samples: expected a positive whole number of samples, got {samples!r}")
        # a dumped spec (a contract) carries both; they must agree
        if ms is not None and not math.isclose(float(ms), 1000 * samples / rate, rel_tol=1e-9):
            raise ValueError(f"chunk_ms {ms!r} disagrees with chunk_samples {samples} at {rate} Hz ({format_ms(1000 * samples / rate)} ms)")
        field = "chunk_samples"
    if isinstance(frontend, LogMelFrontend) and samples % frontend.hop_length:
        hop = frontend.hop_length
        got = f"{format_ms(ms)} ms ({samples} samples)" if field == "chunk_ms" else f"{samples}"
        raise ValueError(
            f"{field}: the log-mel frontend needs whole {hop}-sample hops ({format_ms(1000 * hop / rate)} ms at {rate} Hz): "
            f"expected a multiple of {hop} samples, got {got}"
        )
    return {k: v for k, v in data.items() if k != "chunk_ms"} | {"chunk_samples": samples}


class StreamSpec(Strict):
    """Everything an app (and every runtime here) needs to drive the model chunk by chunk.

    Written with `chunk_samples` or `chunk_ms` (either, or both if they agree); `chunk_samples` is stored and
    `chunk_ms` derived, and both appear in a dumped spec.
    """

    chunk_samples: int = Field(
        gt=0,
        description="Samples of audio consumed per call (any positive count for a PCM model; whole hops for log-mel).",
    )
    frontend: Frontend = Field(description="What turns raw audio into the chunk input.")
    inputs: tuple[InputSpec, ...] = Field(description="Chunk inputs (not state), in graph order.", min_length=1)
    states: tuple[StateSpec, ...] = Field((), description="State pairs, in graph order after the chunk inputs.")
    outputs: tuple[OutputSpec, ...] = Field(description="Non-state outputs, in graph order before the states.", min_length=1)
    decoder: Decoder | None = Field(None, description="How to turn outputs into a transcript or decisions.")

    @model_validator(mode="before")
    @classmethod
    def _chunk_length(cls, data: Any) -> Any:
        return chunk_samples_from(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _decoder_fits(self) -> "StreamSpec":
        if isinstance(self.decoder, DecisionDecoder):
            kinds = {o.kind for o in self.outputs}
            if not kinds & set(DECISION_KINDS):
                raise ValueError("decoder: a 'decision' decoder needs a decision_logits or probability output")
            if "decision_logits" not in kinds and len(self.decoder.classes) != 2:
                raise ValueError(
                    f"decoder.classes: a probability output's decision has two classes (below, at or above the "
                    f"threshold), got {list(self.decoder.classes)}"
                )
        return self

    @computed_field(description="Milliseconds of audio per call: 1000 * chunk_samples / sample_rate (derived; may be fractional).")
    @property
    def chunk_ms(self) -> float:
        return 1000 * self.chunk_samples / self.frontend.sample_rate

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs] + [s.input for s in self.states]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs] + [s.output for s in self.states]


class ChunkLength(Strict):
    """One chunk length as a manifest lists it, in milliseconds or in samples.

    It names the variant in that unit: `20ms` for chunk_ms 20, `512smp` for chunk_samples 512 (smp: samples).
    A manifest lists one unit, so its names never collide; the same length written in the other unit is
    another name (`@32ms` and `@512smp` are both 512 samples at 16 kHz). Reports and contracts carry both
    figures, so nothing needs to parse a name.
    """

    unit: Literal["ms", "samples"] = Field(description="The unit the manifest lists chunk lengths in.")
    value: int = Field(gt=0, description="The chunk length in that unit.")

    @property
    def label(self) -> str:
        return f"{self.value}ms" if self.unit == "ms" else f"{self.value}smp"

    @property
    def field(self) -> str:
        return "chunk_ms" if self.unit == "ms" else "chunk_samples"

    def matches(self, spec: StreamSpec) -> bool:
        return spec.chunk_ms == self.value if self.unit == "ms" else spec.chunk_samples == self.value
