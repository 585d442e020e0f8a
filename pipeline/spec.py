"""The streaming I/O of a model: the single description every stage, runtime and contract reads.

A model in `models/` returns a `StreamSpec` from `streaming_spec(chunk_ms)`; a manifest may
declare the same structure explicitly under `io` (a user's own model), and the trace stage
checks that the model really produces what is declared.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

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


class OutputSpec(Strict):
    name: str = Field(description="Graph output name.")
    shape: tuple[int, ...] = Field(description="Static shape of the output for one chunk.")
    dtype: DType = Field("float32", description="Element type.")
    time_axis: int = Field(1, description="Axis along which per-chunk outputs concatenate into the batch output.")
    kind: Literal["ctc_logits", "decision_logits", "tensor"] = Field(
        "tensor",
        description="How verification judges the output: CTC transcript, per-frame decision, or error only.",
    )


class CtcDecoder(Strict):
    kind: Literal["ctc_greedy"] = Field("ctc_greedy", description="Greedy CTC decoding of the `ctc_logits` output.")
    vocabulary: str = Field(description="Characters of the output classes after the blank, in class order.")
    blank: int = Field(0, description="Class index of the CTC blank.")


class DecisionDecoder(Strict):
    kind: Literal["decision"] = Field("decision", description="Arg-max class per frame of the `decision_logits` output.")
    classes: tuple[str, ...] = Field(description="Class names in output order, e.g. ('silence', 'speech').")


Decoder = Annotated[Union[CtcDecoder, DecisionDecoder], Field(discriminator="kind")]


class StreamSpec(Strict):
    """Everything an app (and every runtime here) needs to drive the model chunk by chunk."""

    chunk_ms: int = Field(20, description="Milliseconds of audio consumed per call.")
    frontend: Frontend = Field(description="What turns raw audio into the chunk input.")
    inputs: tuple[InputSpec, ...] = Field(description="Chunk inputs (not state), in graph order.", min_length=1)
    states: tuple[StateSpec, ...] = Field((), description="State pairs, in graph order after the chunk inputs.")
    outputs: tuple[OutputSpec, ...] = Field(description="Non-state outputs, in graph order before the states.", min_length=1)
    decoder: Decoder | None = Field(None, description="How to turn outputs into a transcript or decisions.")

    @property
    def chunk_samples(self) -> int:
        return self.frontend.sample_rate * self.chunk_ms // 1000

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs] + [s.input for s in self.states]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs] + [s.output for s in self.states]
