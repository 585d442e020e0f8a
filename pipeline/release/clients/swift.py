"""Swift for Core ML: one file, `SpeechportStream.swift`, for the explicit-state and the stateful (iOS 18) variants."""

from __future__ import annotations

from pathlib import Path

from pipeline.contract import Contract
from pipeline.release.clients import Tensor, decoder_fields, fill, header, quote, template, tensor_plan

FILE = "SpeechportStream.swift"
COMPUTE_UNITS = {"ALL": ".all", "CPU_ONLY": ".cpuOnly", "CPU_AND_GPU": ".cpuAndGPU", "CPU_AND_NE": ".cpuAndNeuralEngine"}


def _ints(values) -> str:
    return f"[{', '.join(str(int(v)) for v in values)}]"


def _floats(values) -> str:
    return f"[{', '.join(repr(float(v)) for v in values)}]"


def _binding(t: Tensor) -> str:
    return (
        f"TensorBinding(name: {quote(t.artifact_name)}, shape: {_ints(t.shape)}, permutation: {_ints(t.permutation)}, "
        f"dtype: {quote(t.dtype)}, scale: {float(t.scale)!r}, zeroPoint: {t.zero_point})"
    )


def _bindings(items: list[Tensor]) -> str:
    return f"[{', '.join(_binding(t) for t in items)}]" if items else "[TensorBinding]()"


def constants(contract: Contract) -> str:
    plan = tensor_plan(contract)
    spec = contract.stream
    mel = plan.logmel
    kind, vocabulary, blank, classes = decoder_fields(contract)
    units = COMPUTE_UNITS.get(contract.runtime.get("compute_units", "ALL"), ".all")
    lines = [
        f"static let chunkSamples = {spec.chunk_samples}",
        f"static let sampleRate = {spec.frontend.sample_rate}",
        f"static let logmel = {'true' if mel else 'false'}",
        f"static let nFft = {mel.n_fft if mel else 0}",
        f"static let winLength = {mel.win_length if mel else 0}",
        f"static let hopLength = {mel.hop_length if mel else 0}",
        f"static let nMels = {mel.n_mels if mel else 0}",
        f"static let fMin = {float(mel.f_min if mel else 0.0)!r}",
        f"static let fMax = {float(mel.f_max if mel else 0.0)!r}",
        f"static let logFloor = {float(mel.log_floor if mel else 0.0)!r}",
        f"static let computeUnits: MLComputeUnits = {units}",
        f"static let stateInModel = {'true' if contract.state_in_model else 'false'}",
        f"static let input = {_binding(plan.feature)}",
        f"static let frameStride = {plan.frame_stride}",
        f"static let featureStride = {plan.feature_stride}",
        f"static let stateInputs = {_bindings([i for i, _, _ in plan.states])}",
        f"static let stateOutputs = {_bindings([o for _, o, _ in plan.states])}",
        f"static let stateInit: [Float] = {_floats(init for _, _, init in plan.states)}",
        f"static let outputs = {_bindings([o[0] for o in plan.outputs])}",
        f"static let outputKinds: [String] = [{', '.join(quote(o[1]) for o in plan.outputs)}]",
        f"static let outputFrames = {_ints(o[2] for o in plan.outputs)}",
        f"static let outputFrameStrides = {_ints(o[3] for o in plan.outputs)}",
        f"static let outputClasses = {_ints(o[4] for o in plan.outputs)}",
        f"static let outputClassStrides = {_ints(o[5] for o in plan.outputs)}",
        f"static let outputThresholds: [Float] = {_floats(o[6] for o in plan.outputs)}",
        f"static let decoder = {quote(kind)}",
        f"static let vocabulary = {quote(vocabulary)}",
        f"static let blank = {blank}",
        f"static let classes: [String] = [{', '.join(quote(c) for c in classes)}]",
    ]
    return "\n".join("    " + line for line in lines)


def generate(contract: Contract, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILE
    path.write_text(fill(template(FILE), {"HEADER": header(contract, "//").rstrip("\n"), "CONSTANTS": constants(contract)}))
    return [path]
