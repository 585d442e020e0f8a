"""`contract.json`: how an app drives one artifact, written next to every artifact.

It holds the stream description (frontend, chunk in samples and in milliseconds, inputs, state
pairs, outputs with their decision rules, decoder) in the model's own terms, plus a binding per tensor that says what that tensor is called inside this
artifact, its shape and dtype there, the axis permutation from the contract's layout to the
artifact's (converters re-lay tensors out), and for integer tensors the scale and zero point.
Runtimes are driven by this file alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipeline.spec import DECISION_KINDS, DecisionDecoder, DType, OutputSpec, Strict, StreamSpec, format_ms

CONTRACT_FILE = "contract.json"


class Quantization(Strict):
    scale: float = Field(description="real = scale * (q - zero_point)")
    zero_point: int = Field(description="Integer that represents real 0.")
    dtype: Literal["int8", "uint8", "int16", "uint16"] = Field(description="Integer type on the wire.")


class Binding(Strict):
    name: str = Field(description="Tensor name inside the artifact.")
    shape: tuple[int, ...] = Field(description="Shape inside the artifact (after `permutation`).")
    dtype: DType | Literal["float16", "int8", "uint8", "int16", "uint16"] = Field(description="Element type inside the artifact.")
    permutation: tuple[int, ...] | None = Field(
        None, description="Artifact tensor = contract tensor transposed by this permutation; None if identical."
    )
    quantization: Quantization | None = Field(None, description="Set when the artifact takes or gives integers.")


class ExportRoute(Strict):
    route: Literal["torch.export", "torch.jit.trace"] = Field(description="How the PyTorch model was captured as a graph.")
    reason: str | None = Field(None, description="Why the fallback route was taken, when it was.")
    adapters: tuple[str, ...] = Field((), description="Layers swapped for an equivalent formulation before capture (checked numerically).")


class Contract(Strict):
    schema_version: int = Field(
        3,
        alias="schema",
        description="Contract format version. 2: the stream states chunk_samples and chunk_ms; probability outputs. "
        "3: state_in_model and runtime; quantized artifacts also carry `quantization` (their recipe).",
    )
    target: str = Field(description="Manifest target that produced the artifact.")
    model: str = Field(description="Model factory the artifact was exported from.")
    backend: str = Field(description="Runtime that executes the artifact (torch, onnxruntime, litert, ...).")
    precision: str = Field(description="fp32, fp16, int8 or int16x8.")
    artifact: str = Field(description="File name of the model inside this directory.")
    stream: StreamSpec = Field(description="Frontend, chunk, inputs, state pairs, outputs and decoder.")
    bindings: dict[str, Binding] = Field(description="Contract tensor name -> how it appears in the artifact.")
    usage: tuple[str, ...] = Field((), description="The streaming loop, step by step, for an app developer.")
    export: ExportRoute | None = Field(None, description="How the graph this artifact derives from was captured from PyTorch.")
    state_in_model: bool = Field(
        False,
        description="The recurrent state lives inside the model (e.g. a Core ML StateType): the app keeps no state "
        "tensors; it creates the model's state before the first chunk and again to restart the stream. The state "
        "bindings then name the model's state buffers.",
    )
    runtime: dict[str, str] = Field(default_factory=dict, description="How the app must load the artifact (e.g. Core ML compute units).")
    backend_metadata: dict[str, Any] | None = Field(
        None,
        description="What an integration of this backend needs beyond the bindings, under the backend's name "
        "(e.g. qnn: SDK versions, SoCs, context binaries, per-tensor encodings); absent for backends with none.",
    )
    quantization: dict[str, Any] | None = Field(
        None,
        description="Quantized artifacts: the recipe (what stays at higher precision, and as what; the calibration "
        "method; whether searched, pinned in the manifest or stock) and the search's summary; absent for float artifacts.",
    )

    def binding(self, name: str) -> Binding:
        return self.bindings[name]


def usage_steps(stream: StreamSpec, state_in_model: bool = False) -> tuple[str, ...]:
    frontend = stream.frontend
    if frontend.kind == "logmel":
        feature = (
            f"compute {frontend.n_mels}-bin log-mel frames from the chunk (Hann window {frontend.win_length}, "
            f"hop {frontend.hop_length}, FFT {frontend.n_fft}, mel {frontend.f_min}-{frontend.f_max} Hz HTK scale, "
            f"ln(mel + {frontend.log_floor})), keeping the last {frontend.win_length - frontend.hop_length} samples "
            "of the previous chunk as left context (zeros before the first)"
        )
    else:
        feature = "feed the samples as float32 in [-1, 1]"
    if state_in_model:
        inits = sorted({s.init for s in stream.states})
        fill = "" if inits == [0.0] else " and write each state's `init` value into it"
        restart = f"Before the first chunk, and whenever the stream restarts (a new utterance): create a new model state{fill}."
    else:
        restart = "Before the first chunk, and whenever the stream restarts: set every state input to its `init` value."
    steps = [
        restart,
        f"Read {stream.chunk_samples} samples ({format_ms(stream.chunk_ms)} ms at {frontend.sample_rate} Hz, mono) "
        "from the microphone.",
        f"For input {stream.inputs[0].name!r}: {feature}.",
        "Run the model with the chunk input(s)"
        + ("" if state_in_model else " and the current state inputs")
        + ", each converted to its binding's shape (permutation), dtype and, for integer bindings, quantized with "
        "its scale and zero point.",
    ]
    if state_in_model:
        steps.append("Run every chunk with the same model state: the model updates it in place; the app keeps no state tensors.")
    else:
        steps += [f"Keep output {s.output!r} and feed it as {s.input!r} on the next call." for s in stream.states]
    if stream.decoder is not None and stream.decoder.kind == "ctc_greedy":
        steps.append("Decode: arg-max class per frame, merge repeats, drop class 0 (blank), map class k to vocabulary[k-1].")
    classes = stream.decoder.classes if isinstance(stream.decoder, DecisionDecoder) else None
    steps += [decision_step(o, classes) for o in stream.outputs if o.kind in DECISION_KINDS]
    return tuple(steps)


def decision_step(output: OutputSpec, classes: tuple[str, ...] | None) -> str:
    """How an app decides, per frame, from one decision_logits or probability output."""
    if output.kind == "probability":
        negative, positive = classes if classes is not None and len(classes) == 2 else ("negative", "positive")
        return (
            f"Decide from output {output.name!r}, one value p in [0, 1] per frame: {positive} when p >= "
            f"{output.threshold:g}, else {negative}."
        )
    named = f" among {list(classes)}" if classes is not None else ""
    step = f"Decide from output {output.name!r}: arg-max class per frame{named}."
    if output.positive_classes is not None:
        names = [classes[c] for c in output.positive_classes] if classes is not None and len(classes) > max(output.positive_classes) else []
        step += f" The frame is positive when that class is one of {list(output.positive_classes)}" + (f" ({', '.join(names)})." if names else ".")
    return step


def identity_bindings(stream: StreamSpec) -> dict[str, Binding]:
    """Bindings for an artifact that keeps the contract's names, shapes and float types."""
    bindings = {i.name: Binding(name=i.name, shape=i.shape, dtype=i.dtype) for i in stream.inputs}
    for s in stream.states:
        bindings[s.input] = Binding(name=s.input, shape=s.shape, dtype=s.dtype)
        bindings[s.output] = Binding(name=s.output, shape=s.shape, dtype=s.dtype)
    bindings.update({o.name: Binding(name=o.name, shape=o.shape, dtype=o.dtype) for o in stream.outputs})
    return bindings


def write_contract(directory: Path, contract: Contract) -> None:
    # without metadata the field is left out, so every other backend's contract keeps its bytes
    absent = {name for name in ("backend_metadata", "quantization") if getattr(contract, name) is None}
    document = contract.model_dump(mode="json", by_alias=True, exclude=absent or None)
    text = json.dumps(document, indent=2) + "\n"
    (directory / CONTRACT_FILE).write_text(text)


def read_contract(directory: Path) -> Contract:
    return Contract.model_validate(json.loads((directory / CONTRACT_FILE).read_text()))
