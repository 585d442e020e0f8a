"""C++ on onnxruntime's C API: `speechport_stream.hpp` (the runtime-independent loop) and `speechport_stream.cpp`
(session, state feedback, a command line that streams a WAV file or replays the golden vectors).

The same files serve the DSP: onnxruntime with the QNN execution provider is `--ep QNN backend_path=...`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.contract import Contract
from pipeline.release.clients import Tensor, decoder_fields, fill, header, quote, template, tensor_plan

HEADER_FILE, SOURCE_FILE = "speechport_stream.hpp", "speechport_stream.cpp"


def _ints(values) -> str:
    return "{" + ", ".join(str(int(v)) for v in values) + "}"


def _binding(t: Tensor) -> str:
    return f"TensorBinding{{{quote(t.artifact_name)}, {_ints(t.shape)}, {_ints(t.permutation)}, {quote(t.dtype)}, {float(t.scale)!r}f, {t.zero_point}}}"


def constants(contract: Contract) -> str:
    plan = tensor_plan(contract)
    spec = contract.stream
    mel = plan.logmel
    kind, vocabulary, blank, classes = decoder_fields(contract)
    lines = [
        f"constexpr int CHUNK_SAMPLES = {spec.chunk_samples};",
        f"constexpr int SAMPLE_RATE = {spec.frontend.sample_rate};",
        f"constexpr bool LOGMEL = {'true' if mel else 'false'};",
        f"constexpr int N_FFT = {mel.n_fft if mel else 2};",
        f"constexpr int WIN_LENGTH = {mel.win_length if mel else 1};",
        f"constexpr int HOP_LENGTH = {mel.hop_length if mel else 1};",
        f"constexpr int N_MELS = {mel.n_mels if mel else 1};",
        f"constexpr double F_MIN = {float(mel.f_min if mel else 0.0)!r};",
        f"constexpr double F_MAX = {float(mel.f_max if mel else 1.0)!r};",
        f"constexpr double LOG_FLOOR = {float(mel.log_floor if mel else 1.0)!r};",
        f"inline const TensorBinding INPUT = {_binding(plan.feature)};",
        f"constexpr const char* INPUT_CONTRACT_NAME = {quote(plan.feature.contract_name)};",
        f"constexpr size_t FRAME_STRIDE = {plan.frame_stride};",
        f"constexpr size_t FEATURE_STRIDE = {plan.feature_stride};",
        f"inline const std::vector<TensorBinding> STATE_INPUTS{{{', '.join(_binding(i) for i, _, _ in plan.states)}}};",
    ]
    lines += [
        f"inline const std::vector<TensorBinding> STATE_OUTPUTS{{{', '.join(_binding(o) for _, o, _ in plan.states)}}};",
        f"inline const std::vector<const char*> STATE_INPUT_CONTRACT_NAMES{{{', '.join(quote(i.contract_name) for i, _, _ in plan.states)}}};",
        f"inline const std::vector<float> STATE_INIT{{{', '.join(f'{float(init)!r}f' for _, _, init in plan.states)}}};",
        f"inline const std::vector<TensorBinding> OUTPUTS{{{', '.join(_binding(o[0]) for o in plan.outputs)}}};",
        "// outputs, then state outputs: the order Model::call returns them in",
        "inline const std::vector<const char*> OUTPUT_CONTRACT_NAMES{"
        + ", ".join(quote(t.contract_name) for t in [o[0] for o in plan.outputs] + [o for _, o, _ in plan.states])
        + "};",
        f"inline const std::vector<std::string> OUTPUT_KINDS{{{', '.join(quote(o[1]) for o in plan.outputs)}}};",
        f"inline const std::vector<int> OUTPUT_FRAMES{_ints(o[2] for o in plan.outputs)};",
        f"inline const std::vector<size_t> OUTPUT_FRAME_STRIDES{_ints(o[3] for o in plan.outputs)};",
        f"inline const std::vector<int> OUTPUT_CLASSES{_ints(o[4] for o in plan.outputs)};",
        f"inline const std::vector<size_t> OUTPUT_CLASS_STRIDES{_ints(o[5] for o in plan.outputs)};",
        f"inline const std::vector<float> OUTPUT_THRESHOLDS{{{', '.join(f'{float(o[6])!r}f' for o in plan.outputs)}}};",
        f"constexpr const char* DECODER = {quote(kind)};",
        f"inline const std::string VOCABULARY = {quote(vocabulary)};",
        f"constexpr int BLANK = {blank};",
        f"inline const std::vector<std::string> CLASSES{{{', '.join(quote(c) for c in classes)}}};",
    ]
    return "\n".join(lines)


def generate(contract: Contract, out: Path) -> list[Path]:
    if contract.state_in_model:
        raise AssertionError("an onnxruntime contract never keeps its state inside the model")
    out.mkdir(parents=True, exist_ok=True)
    values = {"HEADER": header(contract, "//").rstrip("\n"), "CONSTANTS": constants(contract)}
    written = []
    for name in (HEADER_FILE, SOURCE_FILE):
        path = out / name
        path.write_text(fill(template(name), values))
        written.append(path)
    return written
