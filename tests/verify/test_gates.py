"""The gates: every precision's default bounds the error's magnitude for every output kind, a removed bound
needs a reason that the report prints, and a model's own bounds sit between the backend's and the manifest's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from pydantic import ValidationError

from pipeline import dag

from pipeline import execute as executor
from pipeline.cache import Artifact, Cache
from pipeline.contract import read_contract, write_contract
from pipeline.manifest import load_manifest
from pipeline.plan import plan
from pipeline.backends import REGISTRY, get_backend
from pipeline.verify.gates import FLOAT16, FLOAT32, INT8_ACTIVATIONS, INT8_WEIGHTS, INT16_ACTIVATIONS, Tolerance, judge
from pipeline.verify.stage import RESULT_FILE, VerifyStage
from tests.conftest import write_manifest

PRESETS = {"fp32": FLOAT32, "fp16": FLOAT16, "int16": INT16_ACTIVATIONS, "int8": INT8_ACTIVATIONS, "int8w": INT8_WEIGHTS}
# every default a registered backend applies, its own adjustments of the presets included
BACKEND_DEFAULTS = {f"{b}.{p.name}": p.tolerance for b in REGISTRY for p in get_backend(b).precisions}


def test_a_bound_is_removed_only_with_a_reason() -> None:
    with pytest.raises(ValidationError, match="min_cosine set to null without a reason"):
        Tolerance.model_validate({"min_cosine": None})
    with pytest.raises(ValidationError, match="not bounds"):
        Tolerance.model_validate({"waived": {"min_cosin": "typo"}})
    with pytest.raises(ValidationError, match="the reason is empty"):
        Tolerance.model_validate({"min_cosine": None, "waived": {"min_cosine": " "}})
    removed = INT8_ACTIVATIONS.merged(Tolerance.model_validate({"min_cosine": None, "waived": {"min_cosine": "a VAD's logits"}}))
    assert removed.min_cosine is None and removed.waived == {"min_cosine": "a VAD's logits"}
    assert removed.max_rel == INT8_ACTIVATIONS.max_rel  # the other defaults stay
    # setting the bound again makes the waiver moot
    again = removed.merged(Tolerance(min_cosine=0.5))
    assert again.min_cosine == 0.5 and again.waived == {}


def _metrics(error_fraction: float) -> tuple[dict, dict]:
    """Closed-loop and teacher-forced figures of an output whose every element is off by `error_fraction` of its range."""
    rng = np.random.default_rng(0)
    reference = rng.standard_normal(10_000) * 3
    error = np.full_like(reference, error_fraction * np.abs(reference).max())
    got = reference + error
    from pipeline.verify.metrics import compare, sqnr_db

    m = compare(reference[:, None], got[:, None], len(reference), 500)
    m |= {"one_step_max_abs": m["max_abs"], "one_step_reference_max_abs": m["reference_max_abs"]}
    state = {"max_abs": m["max_abs"], "reference_max_abs": m["reference_max_abs"], "sqnr_db": sqnr_db(reference, error)}
    return {"y": m}, {"y_out": state}


@pytest.mark.parametrize("preset", sorted(PRESETS | BACKEND_DEFAULTS))
def test_half_the_range_fails_every_default_and_on_outputs_and_states_alike(preset: str) -> None:
    outputs, states = _metrics(0.5)
    tolerance = (PRESETS | BACKEND_DEFAULTS)[preset]
    failures = judge(outputs, states, tolerance, {})
    assert any(f.startswith("y: max abs error") for f in failures), failures
    assert any(f.startswith("y: SQNR") for f in failures), failures
    assert any(f.startswith("state y_out:") for f in failures), failures
    # transcripts or decisions that happen to agree do not rescue it
    assert judge(outputs, states, tolerance, {"cer_vs_reference": 0.0, "decision_agreement": 1.0})


def _glitched(calls: int, glitches: int, size: float, background: float = 0.01) -> dict:
    """Closed-loop figures of a stream of `calls` calls off by `background` of the range, `glitches` of them (spread
    over the stream) off by `size` of it."""
    from pipeline.verify.metrics import compare

    rng = np.random.default_rng(1)
    reference = rng.uniform(-1, 1, (calls, 4))
    reference[0, 0] = 1.0  # the range is 1
    error = np.full_like(reference, background)
    error[np.linspace(1, calls - 1, glitches).astype(int), 2] = size
    m = compare(reference, reference + error, calls, 500)
    return m | {"one_step_max_abs": 0.0, "one_step_reference_max_abs": 1.0}


@pytest.mark.parametrize("preset", ["int16", "int8", "int8w"])
def test_a_quantized_output_may_glitch_on_one_call_in_a_thousand_but_never_beyond_its_range(preset: str) -> None:
    tolerance = PRESETS[preset]
    bound = tolerance.max_rel
    # 16,842 calls: the 5.6-minute split at 20 ms, where 16 calls may glitch
    assert not judge({"y": _glitched(16_842, 16, 0.9)}, {}, tolerance, {})
    # one call more, or the same error on 1 % of the calls, fails and says how many were over
    (failure,) = [f for f in judge({"y": _glitched(16_842, 17, 0.9)}, {}, tolerance, {}) if "range" in f]
    assert f"above {bound} on 17 of 16842 calls (at most 16 may, as glitches)" in failure, failure
    assert judge({"y": _glitched(16_842, 168, 0.9)}, {}, tolerance, {})
    # one call off by more than the whole range fails, however long the stream
    (failure,) = [f for f in judge({"y": _glitched(16_842, 1, 1.2)}, {}, tolerance, {}) if "range" in f]
    assert "the bound on any call, glitches included" in failure, failure
    # a short stream (the search's held-out speech) allows one glitch; a stream under 1,000 calls none
    assert not judge({"y": _glitched(1_114, 1, 0.9)}, {}, tolerance, {})
    assert judge({"y": _glitched(999, 1, 0.9)}, {}, tolerance, {})
    # the worst calls are named in the record: where the glitch is
    m = _glitched(16_842, 1, 0.9)
    assert m["worst_calls"][0] == {"step": 1, "max_abs": pytest.approx(0.9)}


def test_float_outputs_and_figures_without_per_call_errors_hold_every_call() -> None:
    m = _glitched(16_842, 1, 0.5)
    assert any("above 0.01" in f for f in judge({"y": m}, {}, FLOAT16, {}))
    without_calls = {k: v for k, v in _glitched(16_842, 1, 0.9).items() if k != "call_max_abs"}
    assert judge({"y": without_calls}, {}, INT16_ACTIVATIONS, {})
    # a NaN on one call is over any bound, not a glitch
    m = _glitched(16_842, 1, float("nan"))
    assert np.isnan(m["worst_calls"][0]["max_abs"]) and m["worst_calls"][0]["step"] == 1
    assert any("nan" in f for f in judge({"y": m}, {}, INT16_ACTIVATIONS, {}))
    assert any("nan" in f for f in judge({"y": m}, {}, INT16_ACTIVATIONS.model_copy(update={"max_glitch_rel": None}), {}))


def test_a_nan_never_passes() -> None:
    outputs, states = _metrics(0.0)
    outputs["y"]["max_abs"] = float("nan")
    assert any("max abs error nan" in f for f in judge(outputs, states, INT8_ACTIVATIONS, {}))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tests.conftest import CORPUS, tiny_checkpoint

    tmp = tmp_path_factory.mktemp("gates")
    manifest = {
        "name": "tiny-gates",
        "model": {"factory": "models.lstm_ctc:build", "kwargs": {"hidden": 32, "layers": 1}, "checkpoint": str(tiny_checkpoint(tmp / "t.safetensors"))},
        "backends": {"onnxruntime": ["fp32"]},
        "verification": {"corpus": str(CORPUS), "split": "verification", "max_seconds": 30},
        "tolerances": {"fp32": {"min_cosine": None, "waived": {"min_cosine": "a reason the report must print"}}},
    }
    path = write_manifest(tmp / "m.yaml", **manifest)
    graph = plan(load_manifest(path))
    built = executor.execute(graph, Cache(tmp / "cache"), "tiny-gates")
    return {"tmp": tmp, "graph": graph, "built": built}


def _offset_output(source: Path, destination: Path, output: str, offset: float, kind: str) -> None:
    """Copy an ONNX artifact with `offset` added to one output, and that output declared as `kind`."""
    shutil.copytree(source, destination)
    model = onnx.load(str(destination / "model.onnx"))
    for node in model.graph.node:
        node.output[:] = [f"{name}_raw" if name == output else name for name in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(offset, np.float32), "broken_offset"))
    model.graph.node.append(helper.make_node("Add", [f"{output}_raw", "broken_offset"], [output]))
    onnx.save(model, str(destination / "model.onnx"))
    contract = read_contract(destination)
    outputs = tuple(o.model_copy(update={"kind": kind}) if o.name == output else o for o in contract.stream.outputs)
    write_contract(destination, contract.model_copy(update={"stream": contract.stream.model_copy(update={"outputs": outputs})}))


@pytest.mark.parametrize("kind", ["tensor", "ctc_logits", "decision_logits"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_an_artifact_off_by_half_its_range_fails_streamed_verification(tiny_onnx: dict, tmp_path: Path, kind: str, preset: str) -> None:
    graph, built = tiny_onnx["graph"], tiny_onnx["built"]
    node = graph.nodes["verify:onnxruntime-fp32@20ms"]
    reference = np.load(built["reference@20ms"].path / "outputs.npz")["logits"]
    half_range = 0.5 * float(np.abs(reference).max())
    _offset_output(built["simplify@20ms"].path, tmp_path / "broken", "logits", half_range, kind)
    inputs = {role: built[dep] for role, dep in node.inputs} | {"model": Artifact("simplify", "x", tmp_path / "broken", "x")}
    config = node.config.model_copy(update={"default_tolerance": PRESETS[preset], "tolerance_override": None})
    out = tmp_path / "verify"
    out.mkdir()
    VerifyStage.run(config, inputs, out, dag.StageContext("verify"))
    result = json.loads((out / RESULT_FILE).read_text())
    assert not result["passed"]
    # judged by magnitude (range and SQNR), whatever the output kind: a consistent offset keeps transcripts and decisions
    assert any(f.startswith("logits: max abs error") for f in result["failures"]), result["failures"]
    assert any(f.startswith("logits: SQNR") for f in result["failures"]), result["failures"]


def test_the_unbroken_artifact_passes_and_the_report_prints_the_waiver(tiny_onnx: dict) -> None:
    built = tiny_onnx["built"]
    report = json.loads((built["report"].path / "report.json").read_text())
    (variant,) = report["variants"]
    assert variant["passed"], variant["failures"]
    assert variant["waived"] == {"min_cosine": "a reason the report must print"}
    assert "`min_cosine` not applied: a reason the report must print" in (built["report"].path / "report.md").read_text()
    assert set(variant["states"]) == {"h_out", "c_out"} and variant["teacher_forced_steps"] == 600
    # the teacher-forced calls sit at the start, the middle and the end of the stream, not only in its first seconds
    from pipeline.verify.records import load_teacher

    steps, state_in, _ = load_teacher(built["reference@20ms"].path)
    total = variant["steps"]
    assert steps[0] == 0 and steps[-1] == total - 1 and np.any(np.abs(steps - total // 2) < 100)
    assert state_in["c_in"].shape == (600, 1, 32)


def test_a_models_own_bounds_apply_between_the_backends_and_the_manifests(tmp_path: Path, tiny_onnx: dict) -> None:
    from pipeline.verify.gates import model_tolerance

    trace = tmp_path / "trace"
    trace.mkdir()
    (trace / "tolerances.json").write_text(json.dumps({"fp32": {"max_abs": 5e-4, "min_sqnr_db": 60.0}}))
    model = model_tolerance(trace, "fp32")
    merged = FLOAT32.merged(model).merged(Tolerance(max_abs=2e-4))
    assert merged.max_abs == 2e-4 and merged.min_sqnr_db == 60.0 and merged.min_cosine == FLOAT32.min_cosine
    assert model_tolerance(trace, "int8") is None


def test_log_probabilities_compare_as_posteriors_and_logits_as_they_are() -> None:
    """A CTC output that is log_softmax compares as the posteriors it encodes: an fp16 runtime's underflow of a class
    PyTorch puts at -17 (Core ML gives -103) is no error, a wrong decision is; raw logits compare as they are."""
    import torch

    from pipeline.spec import StreamSpec
    from pipeline.verify.metrics import as_probabilities, compare, log_probability_outputs

    spec = StreamSpec.model_validate(
        {
            "chunk_ms": 20,
            "frontend": {"kind": "logmel"},
            "inputs": [{"name": "feats", "shape": [1, 2, 80], "time_axis": 1}],
            "outputs": [{"name": "log_probs", "shape": [1, 2, 29], "time_axis": 1, "kind": "ctc_logits"}],
            "decoder": {"kind": "ctc_greedy", "vocabulary": " 'abcdefghijklmnopqrstuvwxyz"},
        }
    )
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 6, (100, 1, 2, 29)).astype(np.float32)
    reference = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert reference.min() < -20  # classes far below one in a million
    assert log_probability_outputs(spec, {"log_probs": reference}) == {"log_probs"}
    assert log_probability_outputs(spec, {"log_probs": logits}) == set()  # raw logits: compared as they are

    underflow = np.where(reference < -16.6, np.float32(-103.25), reference)  # what fp16 exp/log gives there
    assert compare(reference, underflow, 100, 10)["sqnr_db"] < 20  # as log-probabilities: broken by every bound
    assert compare(as_probabilities(reference), as_probabilities(underflow), 100, 10)["max_abs"] < 1e-7
    wrong = np.ascontiguousarray(reference[..., ::-1])  # the classes in reverse: another transcript
    assert compare(as_probabilities(reference), as_probabilities(wrong), 100, 10)["sqnr_db"] < INT8_ACTIVATIONS.min_sqnr_db
