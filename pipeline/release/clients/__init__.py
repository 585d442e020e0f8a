"""Client code generated from a contract: the whole streaming loop an app needs, one language per runtime.

Each language has one template (in `templates/`): the runtime-independent loop (ring buffer of
raw audio, the log-mel frontend or raw PCM, state feedback through each tensor's binding,
decoding, reset) written once, plus the call into its runtime. The generator fills in the
constants of one contract (`tensor_plan`), so the code needs nothing but the artifact: chunk size,
frontend parameters, tensor names inside the artifact, shapes, permutations, quantization, the
state pairs with their initial values, the decoder. Templates use `@@NAME@@` placeholders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from pipeline.contract import Binding, Contract
from pipeline.errors import UserError
from pipeline.spec import CtcDecoder, DecisionDecoder, LogMelFrontend

SUPPORTED_DTYPES = ("float32", "float16", "int8", "uint8", "int16", "uint16")  # uint16: the DSP's 16-bit activations (C++ client)


@dataclass(frozen=True)
class Tensor:
    """One contract tensor as a client handles it."""

    contract_name: str
    artifact_name: str
    shape: tuple[int, ...]  # contract layout
    permutation: tuple[int, ...]  # contract -> artifact (identity when the binding has none)
    dtype: str  # inside the artifact
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def tensor(contract: Contract, name: str, shape: tuple[int, ...]) -> Tensor:
    binding: Binding = contract.bindings[name]
    if binding.dtype not in SUPPORTED_DTYPES:
        raise UserError(f"binding {name!r} has dtype {binding.dtype!r}; generated clients handle {', '.join(SUPPORTED_DTYPES)}", where="contract.json")
    q = binding.quantization
    return Tensor(
        name, binding.name, tuple(shape), tuple(binding.permutation or range(len(shape))), q.dtype if q else binding.dtype,
        q.scale if q else 1.0, q.zero_point if q else 0,
    )


def strides(shape: tuple[int, ...]) -> list[int]:
    out, step = [0] * len(shape), 1
    for axis in range(len(shape) - 1, -1, -1):
        out[axis], step = step, step * shape[axis]
    return out


@dataclass(frozen=True)
class TensorPlan:
    """Everything a template needs, from one contract."""

    contract: Contract
    feature: Tensor
    frame_stride: int  # flat index of (frame t, feature m) in the chunk input: t * frame_stride + m * feature_stride
    feature_stride: int
    states: tuple[tuple[Tensor, Tensor, float], ...]  # (input, output, init)
    outputs: tuple[tuple[Tensor, str, int, int, int, int, float], ...]  # (tensor, kind, frames, frame stride, classes, class stride, threshold)

    @property
    def logmel(self) -> LogMelFrontend | None:
        frontend = self.contract.stream.frontend
        return frontend if isinstance(frontend, LogMelFrontend) else None


def tensor_plan(contract: Contract) -> TensorPlan:
    spec = contract.stream
    if len(spec.inputs) != 1:
        raise UserError(f"generated clients feed one chunk input, the contract declares {len(spec.inputs)}", where="contract.json: stream.inputs")
    target = spec.inputs[0]
    feature = tensor(contract, target.name, target.shape)
    st = strides(target.shape)
    frame_stride, feature_stride = 1, 0
    frontend = spec.frontend
    if isinstance(frontend, LogMelFrontend):
        if frontend.n_fft & (frontend.n_fft - 1):
            raise UserError(f"generated clients use a radix-2 FFT; n_fft {frontend.n_fft} is not a power of two", where="contract.json: stream.frontend")
        feature_axes = [a for a in range(len(target.shape)) if a != target.time_axis and target.shape[a] != 1]
        frame_stride = st[target.time_axis]
        feature_stride = st[feature_axes[0]] if feature_axes else 1
    states = tuple((tensor(contract, s.input, s.shape), tensor(contract, s.output, s.shape), s.init) for s in spec.states)
    outputs = []
    for o in spec.outputs:
        so = strides(o.shape)
        frames = o.shape[o.time_axis] if o.shape else 1
        class_axis = len(o.shape) - 1
        classes = 1 if o.kind == "probability" or class_axis == o.time_axis else o.shape[class_axis]
        outputs.append((tensor(contract, o.name, o.shape), o.kind, frames, so[o.time_axis] if o.shape else 1, classes,
                        so[class_axis] if o.shape else 1, o.threshold if o.threshold is not None else 0.5))
    return TensorPlan(contract, feature, frame_stride, feature_stride, states, tuple(outputs))


def decoder_fields(contract: Contract) -> tuple[str, str, int, list[str]]:
    """(kind, vocabulary, blank, classes): 'ctc' with its vocabulary, 'decision' with its classes, or 'none'."""
    decoder = contract.stream.decoder
    if isinstance(decoder, CtcDecoder):
        return "ctc", decoder.vocabulary, decoder.blank, []
    if isinstance(decoder, DecisionDecoder):
        return "decision", "", 0, list(decoder.classes)
    return "none", "", 0, []


def quote(text: str) -> str:
    """A string literal valid in Kotlin, Swift and C++ (JSON escapes, with `$` escaped for Kotlin templates done by callers)."""
    return json.dumps(text, ensure_ascii=True)


def template(name: str) -> str:
    return resources.files("pipeline.release.clients").joinpath("templates", name).read_text()


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    if "@@" in text:
        start = text.index("@@")
        raise AssertionError(f"template placeholder left unfilled: {text[start:start + 40]!r}")
    return text


def header(contract: Contract, comment: str) -> str:
    return (
        f"{comment} Generated by speechport from contract.json ({contract.target}, {contract.backend}-{contract.precision}, "
        f"model {contract.model}).\n{comment} Regenerate it from the contract rather than editing the constants by hand.\n"
    )
