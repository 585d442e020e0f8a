"""Kotlin for the LiteRT interpreter (`org.tensorflow.lite.Interpreter`): one file, `SpeechportStream.kt`."""

from __future__ import annotations

from pathlib import Path

from pipeline.contract import Contract
from pipeline.release.clients import Tensor, decoder_fields, fill, header, quote, template, tensor_plan

FILE = "SpeechportStream.kt"


def _string(text: str) -> str:
    return quote(text).replace("$", "\\$")


def _float(x: float) -> str:
    return f"{float(x)!r}f"


def _ints(values) -> str:
    return f"intArrayOf({', '.join(str(int(v)) for v in values)})"


def _binding(t: Tensor) -> str:
    return f"TensorBinding({_string(t.artifact_name)}, {_ints(t.shape)}, {_ints(t.permutation)}, {_string(t.dtype)}, {_float(t.scale)}, {t.zero_point})"


def _array(items: list[str], kind: str) -> str:
    return f"arrayOf<{kind}>({', '.join(items)})"


def constants(contract: Contract) -> str:
    plan = tensor_plan(contract)
    spec = contract.stream
    mel = plan.logmel
    kind, vocabulary, blank, classes = decoder_fields(contract)
    lines = [
        f"const val CHUNK_SAMPLES = {spec.chunk_samples}",
        f"const val SAMPLE_RATE = {spec.frontend.sample_rate}",
        f"const val LOGMEL = {'true' if mel else 'false'}",
        f"const val N_FFT = {mel.n_fft if mel else 0}",
        f"const val WIN_LENGTH = {mel.win_length if mel else 0}",
        f"const val HOP_LENGTH = {mel.hop_length if mel else 0}",
        f"const val N_MELS = {mel.n_mels if mel else 0}",
        f"const val F_MIN = {float(mel.f_min if mel else 0.0)!r}",
        f"const val F_MAX = {float(mel.f_max if mel else 0.0)!r}",
        f"const val LOG_FLOOR = {float(mel.log_floor if mel else 0.0)!r}",
        f"val INPUT = {_binding(plan.feature)}",
        f"const val FRAME_STRIDE = {plan.frame_stride}",
        f"const val FEATURE_STRIDE = {plan.feature_stride}",
        f"val STATE_INPUTS = {_array([_binding(i) for i, _, _ in plan.states], 'TensorBinding')}",
        f"val STATE_OUTPUTS = {_array([_binding(o) for _, o, _ in plan.states], 'TensorBinding')}",
        f"val STATE_INIT = floatArrayOf({', '.join(_float(init) for _, _, init in plan.states)})",
        f"val OUTPUTS = {_array([_binding(t) for t, *_ in plan.outputs], 'TensorBinding')}",
        f"val OUTPUT_KINDS = {_array([_string(o[1]) for o in plan.outputs], 'String')}",
        f"val OUTPUT_FRAMES = {_ints(o[2] for o in plan.outputs)}",
        f"val OUTPUT_FRAME_STRIDES = {_ints(o[3] for o in plan.outputs)}",
        f"val OUTPUT_CLASSES = {_ints(o[4] for o in plan.outputs)}",
        f"val OUTPUT_CLASS_STRIDES = {_ints(o[5] for o in plan.outputs)}",
        f"val OUTPUT_THRESHOLDS = floatArrayOf({', '.join(_float(o[6]) for o in plan.outputs)})",
        f"const val DECODER = {_string(kind)}",
        f"const val VOCABULARY = {_string(vocabulary)}",
        f"const val BLANK = {blank}",
        f"val CLASSES = {_array([_string(c) for c in classes], 'String')}",
    ]
    return "\n".join("    " + line for line in lines)


def generate(contract: Contract, out: Path) -> list[Path]:
    if contract.state_in_model:
        raise AssertionError("a LiteRT contract never keeps its state inside the model")
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILE
    path.write_text(fill(template(FILE), {"HEADER": header(contract, "//").rstrip("\n"), "CONSTANTS": constants(contract)}))
    return [path]
