"""The Qualcomm DSP path: QDQ quantization with integer I/O and the state-range guard, every node on HTP (a
refused node named with its op), the DLC and per-SoC context binaries, the EP-context model matching the QDQ graph,
the qnn stages' cache behaviour and the error for a missing onnxruntime-qnn; the recipe search (candidates on the
CPU EP, the choice confirmed on the simulator), its percentile calibration and a choice the simulator rejects.

One tiny target (a 1 x 32 LSTM, a8w8 and a16w8) is built once for the module, streamed on the HTP simulator for
a few seconds of speech (a simulator call costs milliseconds, not microseconds), its recipes searched on 9 s of
held-out speech (two utterances) and confirmed on the first 5 s (one).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import dag
from pipeline import execute as executor
from pipeline.backends.qnn.options import QnnOptions
from pipeline.cache import Artifact, Cache, sha256_file
from pipeline.contract import read_contract
from pipeline.errors import ToolchainError, UserError
from pipeline.manifest import load_manifest
from pipeline.plan import plan
from pipeline.session import from_binding, to_binding
from pipeline.spec import CtcDecoder, LogMelFrontend, InputSpec, OutputSpec, StateSpec, StreamSpec
from tests.conftest import CORPUS, tiny_checkpoint, write_manifest

PRECISIONS = ["a8w8", "a16w8"]


def manifest(tmp: Path, **extra) -> dict:
    return {
        "name": "tiny-dsp",
        "model": {"factory": "models.lstm_ctc:build", "kwargs": {"hidden": 32, "layers": 1}, "checkpoint": str(tiny_checkpoint(tmp / "tiny.safetensors"))},
        "chunk_ms": [20],
        "backends": {"qnn": PRECISIONS},
        "verification": {"corpus": str(CORPUS), "split": "verification", "max_seconds": 4},
        "calibration": {"corpus": str(CORPUS), "split": "calibration", "max_samples": 200},
        "quantization": {"held_out_seconds": 9, "confirm_seconds": 5.2},
        **extra,
    }


def build(document: dict, path: Path, cache: Path) -> tuple[dict[str, Artifact], dict[str, bool], dag.Graph]:
    hits: dict[str, bool] = {}
    events = executor.BuildEvents(finished=lambda node_id, hit, seconds, note: hits.__setitem__(node_id, hit))
    graph = plan(load_manifest(write_manifest(path, **document)))
    return executor.execute(graph, Cache(cache), "tiny-dsp", events), hits, graph


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("dsp")
    document = manifest(tmp)
    built, hits, graph = build(document, tmp / "m.yaml", tmp / "cache")
    report = json.loads((built["report"].path / "report.json").read_text())
    return {"tmp": tmp, "document": document, "built": built, "hits": hits, "graph": graph, "report": report}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_runs_on_htp_with_integer_bindings_and_ships_dlc_and_context_binaries(tiny_target: dict, precision: str) -> None:
    artifact = tiny_target["built"][f"qnn-htp-{precision}@20ms"].path
    contract = read_contract(artifact)
    dtype = {"a8w8": "uint8", "a16w8": "uint16"}[precision]
    assert contract.backend == "qnn" and contract.precision == precision and contract.artifact == "model.onnx"
    # a state the recipe search kept at 16 bits in a8w8 has 16-bit I/O, and so has an output a kept op makes (the search
    # may keep the output layer)
    import onnx

    kept = {n for s in contract.stream.states if s.input in contract.quantization["keep_states"] for n in (s.input, s.output)}
    covered = set(contract.quantization.get("covered", ()))
    kept |= {o for n in onnx.load(str(tiny_target["built"]["qnn-legalize@20ms"].path / "model.onnx")).graph.node if n.name in covered for o in n.output}
    for name, binding in contract.bindings.items():
        expected = "uint16" if name in kept else dtype
        assert binding.dtype == expected and binding.quantization is not None and binding.quantization.dtype == expected, (name, binding)
    # a state pair shares one encoding, so the app may feed the integer state straight back
    # (h_out = o * tanh(c) too, made inside c's 16-bit island when the search keeps it: it leaves through the island's
    # convert to 8 bits, which is given the pair's range as well)
    for s in contract.stream.states:
        assert contract.bindings[s.input].quantization == contract.bindings[s.output].quantization, s
    value = np.linspace(-0.9, 0.9, 32, dtype=np.float32).reshape(1, 32)
    h = contract.bindings["h_in"]
    assert np.abs(from_binding(to_binding(value, h), h) - value).max() <= h.quantization.scale / 2 + 1e-7

    qnn = contract.backend_metadata["qnn"]
    assert qnn["versions"]["onnxruntime-qnn"] == "2.7.0" and qnn["versions"]["qnn_sdk"]
    assert [s["name"] for s in qnn["socs"]] == ["SM8550", "SM8650"] and [s["htp_arch"] for s in qnn["socs"]] == ["v73", "v75"]
    files = [qnn["dlc"]] + [b for s in qnn["socs"] for b in [s["context_model"], *s["context_binaries"]]]
    for entry in files:
        assert (artifact / entry["file"]).stat().st_size == entry["bytes"] > 0 and sha256_file(artifact / entry["file"]) == entry["sha256"]
    binaries = [s["context_binaries"][0]["sha256"] for s in qnn["socs"]]
    assert len(set(binaries)) == 2, "one context binary per HTP generation"
    assert (artifact / "model.dlc").read_bytes()[:2] == b"PK"  # a DLC is a zip container
    # per-tensor encodings, QNN's convention (offset = -zero point), for the state tensors among them
    for s in contract.stream.states:  # the encoding a graph output leaves in (an island's convert, for h_out above)
        encoding, q = qnn["encodings"][s.output], contract.bindings[s.output].quantization
        assert (encoding["bitwidth"], encoding["scale"], encoding["offset"]) == (int(q.dtype[4:]), q.scale, -q.zero_point), s

    variant = next(v for v in tiny_target["report"]["variants"] if v["precision"] == precision)
    assert variant["status"] != "error" and variant["runtime"].startswith("QNN HTP simulator") and not variant["device_latency"]
    figures = variant["backend_figures"]
    assert 0.0 <= figures["cpu_ep_vs_htp"]["logits"]["decision_agreement"] <= 1.0
    assert figures["cpu_ep_vs_htp_calls"] == variant["steps"]
    assert all(check["identical"] for check in figures["ep_context_check"].values()), figures["ep_context_check"]
    markdown = (tiny_target["built"]["report"].path / "report.md").read_text()
    assert "## Backend figures" in markdown and "cpu_ep_vs_htp.logits.decision_agreement" in markdown
    assert "not a device's timing" in markdown


def test_an_ep_context_model_reloaded_streams_like_the_qdq_graph(tiny_target: dict) -> None:
    from pipeline.backends.qnn.compile import context_model
    from pipeline.backends.qnn.options import DEFAULT_SOCS
    from pipeline.backends.qnn.session import QnnSession

    artifact = tiny_target["built"]["qnn-htp-a16w8@20ms"].path
    soc = DEFAULT_SOCS[1]
    qdq = QnnSession(artifact, soc=soc.model_dump())
    context = QnnSession(artifact, model=context_model(artifact, soc), soc=soc.model_dump())
    rng = np.random.default_rng(1)
    chunks = [{"feats": rng.standard_normal((2, 80)).astype(np.float32) * 2} for _ in range(20)]
    a, _ = qdq.stream(chunks)
    b, _ = context.stream(chunks)
    assert np.array_equal(a["logits"], b["logits"]) and np.abs(a["logits"]).max() > 0


def test_a_node_htp_cannot_run_fails_naming_node_op_and_legalization(tiny_target: dict, tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    from pipeline.backends.qnn.htp import HtpConfig, HtpStage

    from pipeline.backends.qnn.boundary import _sort_topologically

    source = tiny_target["built"]["qnn-qdq-a16w8@20ms"].path
    model = onnx.load(str(source / "model.onnx"))
    # head -> Q -> DQ -> Softsign -> (the output's Q): a QDQ node unit with an op HTP has no kernel for
    quantize = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.output[0] == "logits")
    head = next(n for n in model.graph.node if quantize.input[0] in n.output)
    head.output[:] = ["head_float"]
    scale, zero_point = quantize.input[1:]
    model.graph.node.extend(
        [
            helper.make_node("QuantizeLinear", ["head_float", scale, zero_point], ["head_q"], name="head_q", domain="com.microsoft"),
            helper.make_node("DequantizeLinear", ["head_q", scale, zero_point], ["head_dq"], name="head_dq", domain="com.microsoft"),
            helper.make_node("Softsign", ["head_dq"], [quantize.input[0]], name="/guard/Softsign"),
        ]
    )
    _sort_topologically(model.graph)
    broken = tmp_path / "qdq"
    shutil.copytree(source, broken)
    onnx.save(model, str(broken / "model.onnx"))
    out = tmp_path / "out"
    out.mkdir()
    inputs = {"model": Artifact("qnn-qdq", "k", broken, "d"), "calibration": tiny_target["built"]["calibrate@20ms"]}
    with pytest.raises(ToolchainError) as caught:
        HtpStage.run(HtpConfig(variant="qnn-a16w8@20ms"), inputs, out, dag.StageContext("qnn-htp-a16w8@20ms"))
    message = str(caught.value)
    for part in ("'/guard/Softsign' (Softsign)", "not supported by QNN EP", "legalization: x / (1 + |x|)", "CPU fallback is disabled", "qnn-a16w8@20ms", "onnxruntime-qnn 2.7.0"):
        assert part in message, message
    assert caught.value.op == "Softsign" and caught.value.exit_code == 4
    assert not (out / "model.dlc").exists()


def guard_spec() -> StreamSpec:
    return StreamSpec(
        chunk_samples=320,
        frontend=LogMelFrontend(),
        inputs=(InputSpec(name="x", shape=(1, 4), time_axis=0),),
        states=(StateSpec(input="s_in", output="s_out", shape=(1, 4)),),
        outputs=(OutputSpec(name="y", shape=(1, 3), time_axis=0, kind="ctc_logits"),),
        decoder=CtcDecoder(vocabulary="ab"),
    )


def relu_state_model(path: Path) -> None:
    """s_out = 0.5 s_in + x W, read inside the graph only by a Relu, and a graph output: the quantizer's trap."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Mul", ["s_in", "half"], ["decayed"]),
        helper.make_node("Add", ["decayed", "xw"], ["s_out"]),
        helper.make_node("Relu", ["s_out"], ["rectified"]),
        helper.make_node("MatMul", ["rectified", "w_out"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
        numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w_out"),
    ]
    io = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph(nodes, "relu_state", [io("x", [1, 4]), io("s_in", [1, 4])], [io("y", [1, 3]), io("s_out", [1, 4])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_state_range_guard_catches_the_relu_trap_and_the_override_fixes_it(tmp_path: Path, precision: str) -> None:
    import onnx

    from pipeline.backends.qnn.boundary import integer_boundary
    from pipeline.backends.qnn.qdq import QdqConfig, check_state_ranges, quantize

    relu_state_model(tmp_path / "float.onnx")
    rng = np.random.default_rng(0)
    recorded = {"x": rng.standard_normal((200, 1, 4)).astype(np.float32), "s_in": rng.uniform(-3, 3, (200, 1, 4)).astype(np.float32)}
    ranges = {"x": {"min": -3.0, "max": 3.0}, "s_in": {"min": -3.0, "max": 3.0}, "s_out": {"min": -4.0, "max": 4.0}, "y": {"min": -5.0, "max": 5.0}}
    spec = guard_spec()
    for overrides in (False, True):
        config = QdqConfig(precision=precision, state_range_overrides=overrides)  # type: ignore[arg-type]
        quantize(tmp_path / "float.onnx", tmp_path / f"qdq-{overrides}.onnx", spec, ranges, recorded, config)
        model = onnx.load(str(tmp_path / f"qdq-{overrides}.onnx"))
        encodings = integer_boundary(model, ranges, "uint16" if precision == "a16w8" else "uint8")
        if not overrides:
            with pytest.raises(ToolchainError) as caught:
                check_state_ranges(spec, encodings, ranges, "qnn-x", "qnn-qdq")
            message = str(caught.value)
            assert "state output 's_out' is quantized to [0," in message and "feeds back as 's_in'" in message, message
            assert "TensorQuantOverrides" in message
        else:
            report = check_state_ranges(spec, encodings, ranges, "qnn-x", "qnn-qdq")
            assert report["s_out"]["covered"] and report["s_out"]["representable"][0] <= -4.0 + encodings["s_out"].scale
            assert report["s_out"]["same_encoding_as_input"]


def test_qnn_cache_hits_and_a_soc_change_misses_the_htp_nodes_a_first_soc_change_the_searches_too(tiny_target: dict) -> None:
    tmp, document = tiny_target["tmp"], tiny_target["document"]
    assert not any(tiny_target["hits"].values())
    _, hits, _ = build(document, tmp / "m.yaml", tmp / "cache")
    assert all(hits.values()), hits
    # another second SoC: only the files built for the SoCs change
    changed = {**document, "qnn": {"socs": [{"name": "SM8550", "soc_model": 43, "htp_arch": "v73"}, {"name": "SM8750", "soc_model": 69, "htp_arch": "v79"}]}}
    graph = plan(load_manifest(write_manifest(tmp / "m2.yaml", **changed)))
    statuses = {s.node_id: s for s in dag.explain(graph, Cache(tmp / "cache"), "tiny-dsp")}
    missed = {node for node, s in statuses.items() if not s.hit}
    assert missed == {
        "qnn-htp-a8w8@20ms", "qnn-htp-a16w8@20ms", "verify:qnn-a8w8@20ms", "verify:qnn-a16w8@20ms",
        "verify-noisy:qnn-a8w8@20ms", "verify-noisy:qnn-a16w8@20ms", "report",
    }, missed
    assert any("config socs" in r for r in statuses["qnn-htp-a8w8@20ms"].reasons), statuses["qnn-htp-a8w8@20ms"].reasons
    # another first SoC: also the searches, which confirm their choice on the SoC verification streams on
    changed = {**document, "qnn": {"socs": [{"name": "SM8650", "soc_model": 57, "htp_arch": "v75"}]}}
    graph = plan(load_manifest(write_manifest(tmp / "m2.yaml", **changed)))
    statuses = {s.node_id: s for s in dag.explain(graph, Cache(tmp / "cache"), "tiny-dsp")}
    missed = {node for node, s in statuses.items() if not s.hit}
    assert {"quant-search:qnn-a8w8@20ms", "quant-search:qnn-a16w8@20ms", "qnn-htp-a8w8@20ms"} <= missed, missed
    assert not {"qnn-legalize@20ms", "calibrate@20ms"} & missed, missed
    assert any("config confirm" in r for r in statuses["quant-search:qnn-a8w8@20ms"].reasons), statuses["quant-search:qnn-a8w8@20ms"].reasons


def test_a_new_onnxruntime_qnn_version_misses_the_htp_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.backends.qnn.htp import HtpConfig, HtpStage

    node = dag.Node("qnn-htp-a8w8@20ms", HtpStage, HtpConfig())
    before = dag.key_of(dag.key_document(node, {"model": "m", "calibration": "c"}))
    real = dag.tool_version
    monkeypatch.setattr(dag, "tool_version", lambda name: "2.8.0" if name == "onnxruntime-qnn" else real(name))
    document = dag.key_document(node, {"model": "m", "calibration": "c"})
    assert document["tools"]["onnxruntime-qnn"] == "2.8.0" and dag.key_of(document) != before


def test_soc_pairs_are_checked_against_the_socs_own_generation() -> None:
    with pytest.raises(ValueError, match="SM8550 is soc_model 43 with HTP v73, not soc_model 57 with v73"):
        QnnOptions(socs=[{"name": "SM8550", "soc_model": 57, "htp_arch": "v73"}])
    with pytest.raises(ValueError, match="unknown SoC 'SM9999'"):
        QnnOptions(socs=[{"name": "SM9999", "soc_model": 1, "htp_arch": "v73"}])
    assert [s.label for s in QnnOptions().socs] == ["v73-SM8550", "v75-SM8650"]


def test_a_missing_or_broken_onnxruntime_qnn_names_the_package_and_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import onnxruntime_qnn

    from pipeline.backends.qnn import runtime

    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", None)  # as if not installed: the import raises ImportError
    with pytest.raises(UserError) as caught:
        runtime.qnn_package()
    message = str(caught.value)
    assert "onnxruntime-qnn" in message and "pip install onnxruntime-qnn==2.7.0" in message and "make setup" in message, message
    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", onnxruntime_qnn)

    monkeypatch.setattr(onnxruntime_qnn, "get_qnn_htp_path", lambda: str(tmp_path / "libQnnHtp.so"))
    with pytest.raises(UserError) as caught:
        runtime.qnn_package()
    message = str(caught.value)
    assert "onnxruntime-qnn install is broken" in message and "libQnnHtp.so missing" in message and "pip install onnxruntime-qnn==2.7.0" in message


def test_a_sixteen_bit_state_island_in_a8w8_gives_the_state_pair_one_16_bit_encoding(tiny_target: dict) -> None:
    tmp, document = tiny_target["tmp"], tiny_target["document"]
    changed = {**document, "qnn": {"sixteen_bit_states": {"a8w8": ["c_in"]}}}
    built, hits, graph = build(changed, tmp / "m3.yaml", tmp / "cache")
    assert {node for node, hit in hits.items() if not hit} == {
        "qnn-qdq-a8w8@20ms", "qnn-htp-a8w8@20ms", "verify:qnn-a8w8@20ms", "verify-noisy:qnn-a8w8@20ms", "report"
    }
    # the manifest's hand list pins the a8w8 recipe: no search is planned for it (a16w8's still is)
    assert "quant-search:qnn-a8w8@20ms" not in graph.nodes and "quant-search:qnn-a16w8@20ms" in graph.nodes
    contract = read_contract(built["qnn-htp-a8w8@20ms"].path)
    assert contract.quantization["source"] == "pin" and contract.quantization["keep_states"] == ["c_in"], contract.quantization
    assert "search" not in contract.quantization
    bindings = contract.bindings
    assert bindings["c_in"].dtype == bindings["c_out"].dtype == "uint16" and bindings["c_in"].quantization == bindings["c_out"].quantization
    assert bindings["h_in"].dtype == bindings["feats"].dtype == "uint8"
    report = json.loads((built["report"].path / "report.json").read_text())
    assert all(v["status"] != "error" for v in report["variants"]), report["variants"]


def test_sixteen_bit_weights_in_a16w8_give_the_named_nodes_16_bit_weights_and_run_on_htp(tiny_target: dict) -> None:
    tmp, document = tiny_target["tmp"], tiny_target["document"]
    # node_linear is the head (Gemm); node_matmul's weight is read by another MatMul too (one per frame of a chunk)
    changed = {**document, "qnn": {"sixteen_bit_weights": {"a16w8": ["node_linear", "node_matmul"]}}}
    built, hits, graph = build(changed, tmp / "m4.yaml", tmp / "cache")
    assert {node for node, hit in hits.items() if not hit} == {
        "qnn-qdq-a16w8@20ms", "qnn-htp-a16w8@20ms", "verify:qnn-a16w8@20ms", "verify-noisy:qnn-a16w8@20ms", "report"
    }
    assert "quant-search:qnn-a16w8@20ms" not in graph.nodes and "quant-search:qnn-a8w8@20ms" in graph.nodes  # a pin
    artifact = built["qnn-htp-a16w8@20ms"].path
    contract = read_contract(artifact)
    q = contract.quantization
    assert q["source"] == "pin" and q["keep_ops"] == ["node_linear", "node_matmul"] and q["kept_at"] == "16-bit weights (a16w16 ops)"
    import onnx

    from pipeline.backends.qnn.qdq import weighted_nodes

    weighted = weighted_nodes(onnx.load(str(built["qnn-legalize@20ms"].path / "model.onnx")).graph)
    kept = {weighted[n][0] for n in ("node_linear", "node_matmul")}
    assert len(kept) == 2 and set(q["covered"]) == {n for n, (w, _) in weighted.items() if w in kept}, q["covered"]
    encodings = contract.backend_metadata["qnn"]["encodings"]
    names = {w for w, _ in weighted.values()}
    assert {n: (encodings[n]["bitwidth"], encodings[n]["dtype"]) for n in names} == {
        n: (16, "int16") if n in kept else (8, "uint8") for n in names
    }  # the named nodes' weights at 16 bits, every other weight still 8-bit
    assert all(b.dtype == "uint16" for b in contract.bindings.values())  # activations are 16-bit as before
    report = json.loads((built["report"].path / "report.json").read_text())
    assert all(v["status"] != "error" for v in report["variants"]), report["variants"]  # the HTP stage compiled it, no fallback

    # 16-bit weights need 16-bit activations on HTP: an a8w8 entry is refused with the manifest
    with pytest.raises(UserError) as caught:
        build({**document, "qnn": {"sixteen_bit_weights": {"a8w8": ["node_linear"]}}}, tmp / "m5.yaml", tmp / "cache")
    assert "sixteen_bit_weights" in str(caught.value) and "a16w8" in str(caught.value), str(caught.value)
    # a name that matches no node with a weight fails that variant's stage, listing the nodes that have one
    built, _, _ = build({**document, "qnn": {"sixteen_bit_weights": {"a16w8": ["node_nope*"]}}}, tmp / "m6.yaml", tmp / "cache")
    failed = next(v for v in json.loads((built["report"].path / "report.json").read_text())["variants"] if v["name"] == "qnn-a16w8@20ms")
    message = failed["failures"][0]
    assert failed["status"] == "error" and "node_nope*" in message and "nodes with weights: " in message and "node_linear" in message, message


def test_legalize_rewrites_ops_htp_lacks_exactly_and_the_result_runs_on_htp(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from pipeline.backends.qnn.legalize import REWRITES, legalize
    from pipeline.backends.qnn.ops import REWRITTEN
    from pipeline.backends.qnn.runtime import htp_session

    assert tuple(REWRITES) == REWRITTEN  # what the error message says qnn-legalize rewrites is what it rewrites
    nodes = [
        helper.make_node("Softsign", ["x"], ["a"], name="/m/Softsign"),
        helper.make_node("Sinh", ["a"], ["b"], name="/m/Sinh"),
        helper.make_node("Cosh", ["b"], ["c"], name="/m/Cosh"),
        helper.make_node("Acos", ["a"], ["d"], name="/m/Acos"),
        helper.make_node("Add", ["c", "d"], ["y"], name="/m/Add"),
    ]
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 16])  # noqa: E731
    model = helper.make_model(helper.make_graph(nodes, "htp_lacks", [io("x")], [io("y")]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "before.onnx"))
    fired = legalize(model)
    onnx.save(model, str(tmp_path / "after.onnx"))
    assert {op: len(names) for op, names in fired.items()} == {"Softsign": 1, "Sinh": 1, "Cosh": 1, "Acos": 1}
    assert not {n.op_type for n in model.graph.node} & set(REWRITTEN)
    x = np.linspace(-3, 3, 16, dtype=np.float32).reshape(1, 16)
    run = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    assert np.abs(run(tmp_path / "before.onnx") - run(tmp_path / "after.onnx")).max() <= 1e-5
    from onnxruntime.quantization import QuantType, quantize_static
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    for name in ("before", "after"):  # HTP runs the quantized graph, as qnn-qdq writes it
        samples = iter([{"x": (x * k).astype(np.float32)} for k in np.linspace(-1, 1, 20)])
        reader = type("Reader", (), {"get_next": lambda self: next(samples, None)})()
        config = get_qnn_qdq_config(str(tmp_path / f"{name}.onnx"), reader, activation_type=QuantType.QUInt16)
        quantize_static(str(tmp_path / f"{name}.onnx"), str(tmp_path / f"{name}.qdq.onnx"), reader, activation_type=config.activation_type,
                        weight_type=config.weight_type, op_types_to_quantize=config.op_types_to_quantize, extra_options=config.extra_options)  # fmt: skip
    with pytest.raises(Exception, match="fallback to CPU EP has been explicitly disabled"):
        htp_session(tmp_path / "before.qdq.onnx")
    htp_session(tmp_path / "after.qdq.onnx")  # every node on HTP


def test_refused_nodes_are_read_from_the_verbose_and_the_error_log() -> None:
    from pipeline.backends.qnn.htp import refused_nodes

    verbose = (
        "[V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation FAILED for 1 nodes in OrtNodeUnit (Softsign) :\n"
        "\tOperator type: Softsign Node name: /guard/Softsign Node index: 124\n"
        "\tREASON : Operators of type `Softsign` are not supported by QNN EP.\n"
        "[E:onnxruntime:, qnn_execution_provider.cc:2453 GetCapabilityImpl] Unsupported nodes in QNN EP: { name: /m/Erf, type: Erf }\n"
    )
    assert refused_nodes(verbose) == [
        {"op": "Softsign", "node": "/guard/Softsign", "reason": "Operators of type `Softsign` are not supported by QNN EP."},
        {"op": "Erf", "node": "/m/Erf", "reason": "unsupported by QNN EP"},
    ]


def test_each_qnn_stage_misses_on_its_own_version_and_tool(tiny_target: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    graph, cache = tiny_target["graph"], Cache(tiny_target["tmp"] / "cache")
    real = dag.tool_version
    nodes = [node for node in graph.nodes.values() if node.stage.name.startswith("qnn-")]
    assert {node.stage.name for node in nodes} == {"qnn-legalize", "qnn-qdq", "qnn-htp"}
    for node in nodes:
        with monkeypatch.context() as patch:
            patch.setattr(node.stage, "version", node.stage.version + "-next")
            status = {s.node_id: s for s in dag.explain(graph, cache, "tiny-dsp")}[node.id]
            assert not status.hit and any(r.startswith("stage version") for r in status.reasons), node.id
        tool = node.stage.tools[-1]
        with monkeypatch.context() as patch:
            patch.setattr(dag, "tool_version", lambda name: "0.0-other" if name == tool else real(name))
            status = {s.node_id: s for s in dag.explain(graph, cache, "tiny-dsp")}[node.id]
            assert not status.hit and any(r.startswith(f"tool version {tool}") for r in status.reasons), node.id


def run_search(tiny_target: dict, out: Path, precision: str = "a8w8", **update) -> tuple[dict, list[str]]:
    """The module's quant-search node run again by itself into `out`, its config changed by `update`."""
    from pipeline.dag import StageContext

    graph, built = tiny_target["graph"], tiny_target["built"]
    node = graph.nodes[f"quant-search:qnn-{precision}@20ms"]
    out.mkdir()
    logs: list[str] = []
    node.stage.run(node.config.model_copy(update=update), {role: built[up] for role, up in node.inputs}, out, dag.StageContext(node.id, log=logs.append))
    return json.loads((out / "search.json").read_text()), logs


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_search_picks_a_recipe_confirmed_on_the_simulator_and_the_contract_carries_it(tiny_target: dict, precision: str, tmp_path: Path) -> None:
    graph, built = tiny_target["graph"], tiny_target["built"]
    node = f"quant-search:qnn-{precision}@20ms"
    assert ("recipe", node) in graph.nodes[f"qnn-qdq-{precision}@20ms"].inputs
    assert graph.nodes[node].config.confirm == {"soc": QnnOptions().socs[0].model_dump()}  # the SoC verification streams on
    search = json.loads((built[node].path / "search.json").read_text())
    recipe = json.loads((built[node].path / "recipe.json").read_text())
    assert recipe["source"] == "search" and recipe["calibration"] in ("minmax", "percentile")
    if precision == "a16w8":
        assert recipe["keep_states"] == recipe["keep_frontends"] == []  # every activation is 16-bit already: only weights are kept
    # the candidates streamed on the CPU EP over the held-out speech; the choice on the simulator over its first 5 s
    held_out = search["held_out"]["clean"]["seconds"]
    assert 5.2 < held_out <= 9 and search["evaluations_run"] >= 1
    confirmation = search["confirmation"]
    assert confirmation["runtime"] == "QNN HTP simulator" and 1 <= confirmation["confirmations_run"] <= 3
    assert 0 < confirmation["held_out"]["clean"]["seconds"] <= 5.2 and confirmation["held_out"]["clean"]["steps"] > 0
    confirmed = search["confirmed"]
    assert confirmed["runtime"] == "QNN HTP simulator" and set(confirmed["conditions"]) == {"clean", "noisy"}
    chosen = next(e for e in search["evaluations"] if e.get("confirmed") == confirmed)
    assert search["met"] == (chosen["passed"] and confirmed["passed"]) and chosen["recipe"] | {"source": "search"} == recipe
    assert "cer_vs_reference" in confirmed["conditions"]["clean"]

    contract = read_contract(built[f"qnn-htp-{precision}@20ms"].path)
    q = contract.quantization
    assert q["precision"] == precision and q["source"] == "search" and q["calibration"] == recipe["calibration"]
    assert q["keep_states"] == recipe["keep_states"] and q["keep_ops"] == recipe["keep_ops"]
    assert q["search"]["confirmed"] == confirmed and q["search"]["met"] == search["met"]
    sixteen = [name for name in q["keep_states"] if contract.bindings[name].dtype == "uint16"]
    assert sixteen == q["keep_states"]  # a kept state is a 16-bit island with 16-bit I/O
    assert q["kept_at"] == {"a8w8": "16-bit activations", "a16w8": "16-bit weights (a16w16 ops)"}[precision]
    if precision == "a16w8":  # ranked by what each weight alone does to the outputs
        assert search["sensitivity"] and all("weight_sqnr_db" in f for f in search["sensitivity"])
    # deterministic, confirmation included (wall clock goes to timings.json): the same inputs, the same artifact
    again, _ = run_search(tiny_target, tmp_path / "again", precision)
    assert (tmp_path / "again" / "search.json").read_bytes() == (built[node].path / "search.json").read_bytes()
    assert json.loads((built[node].path / "timings.json").read_text())["confirmation_seconds"]


def test_percentile_calibration_gives_other_activation_encodings_but_keeps_the_state_ranges(tiny_target: dict, tmp_path: Path) -> None:
    from pipeline.backends.qnn.qdq import QdqConfig, QdqStage

    built = tiny_target["built"]
    inputs = {"model": built["qnn-legalize@20ms"], "calibration": built["calibrate@20ms"]}
    encodings, bindings = {}, {}
    for method in ("minmax", "percentile"):
        out = tmp_path / method
        out.mkdir()
        QdqStage.run(QdqConfig(precision="a8w8", calibrate_method=method), inputs, out, dag.StageContext(method))
        encodings[method] = json.loads((out / "encodings.json").read_text())
        contract = read_contract(out)
        assert contract.quantization["calibration"] == method and contract.quantization["source"] == "stock"
        bindings[method] = contract.bindings
    minmax, percentile = encodings["minmax"], encodings["percentile"]
    assert minmax.keys() == percentile.keys()
    changed = [name for name in minmax if minmax[name]["kind"] == "activation" and minmax[name]["scale"] != percentile[name]["scale"]]
    assert changed, "percentile calibration changed no activation encoding"
    # chunk input and state pairs keep their recorded min-max ranges whatever the method (the state-range guard)
    for name in ("feats", "h_in", "h_out", "c_in", "c_out"):
        assert bindings["minmax"][name].quantization == bindings["percentile"][name].quantization, name


def test_sixteen_bit_state_pairs_get_headroom_beyond_the_recorded_range_and_eight_bit_ones_do_not(tiny_target: dict, tmp_path: Path) -> None:
    """A state's range on speech calibration never heard outgrows the recorded one (lstm_ctc's c: 1.71x), and HTP
    feeds a clipped state back: a 16-bit pair is widened by state_headroom; 8 bits keep the recorded range."""
    from pipeline.backends.qnn.qdq import QdqConfig, QdqStage

    built = tiny_target["built"]
    inputs = {"model": built["qnn-legalize@20ms"], "calibration": built["calibrate@20ms"]}
    recorded = json.loads((built["calibrate@20ms"].path / "ranges.json").read_text())["ranges"]

    def representable(q) -> tuple[float, float]:
        top = {"uint8": 255, "uint16": 65535}[q.dtype]
        return q.scale * (0 - q.zero_point), q.scale * (top - q.zero_point)

    configs = {
        "a16w8": QdqConfig(precision="a16w8"),
        "a16w8-none": QdqConfig(precision="a16w8", state_headroom=1.0),
        "a8w8": QdqConfig(precision="a8w8"),
        "a8w8-kept": QdqConfig(precision="a8w8", sixteen_bit_states=("c_in",)),
    }
    spans, encodings = {}, {}
    for label, config in configs.items():
        out = tmp_path / label
        out.mkdir()
        QdqStage.run(config, inputs, out, dag.StageContext(label))
        encodings[label] = json.loads((out / "encodings.json").read_text())
        contract = read_contract(out)
        spans[label] = {name: representable(contract.bindings[name].quantization) for name in ("c_in", "h_in", "feats")}
        headroom = contract.quantization.get("state_headroom", {})
        assert headroom == {"a16w8": {"c_in": 2.0, "h_in": 2.0}, "a8w8-kept": {"c_in": 2.0}}.get(label, {}), (label, headroom)
    low = min(recorded[n]["min"] for n in ("c_in", "c_out"))
    high = max(recorded[n]["max"] for n in ("c_in", "c_out"))
    assert low < 0 < high
    for label, factor in (("a16w8", 2.0), ("a8w8-kept", 2.0), ("a16w8-none", 1.0), ("a8w8", 1.0)):
        got_low, got_high = spans[label]["c_in"]
        step = (got_high - got_low) / (255 if label == "a8w8" else 65535)
        # the encoding spans the widened range to within a step of rounding (the zero point is a whole number)
        assert got_low == pytest.approx(factor * low, abs=step) and got_high == pytest.approx(factor * high, abs=step), (label, spans[label])
    # the values inside the recurrence (f*c, and c itself where the graph stores it mid-call) are widened too: the
    # DSP clipped the byo LSTMCell's c there when only the pair was
    import onnx

    from pipeline.onnx_graph import recurrence_path

    source = built["qnn-legalize@20ms"].path / "model.onnx"
    path = [o for n in recurrence_path(list(onnx.load(str(source)).graph.node), "c_in", "c_out") for o in n.output if o != "c_out"]
    assert path, "the tiny LSTM's c has no value inside its recurrence"

    def width(encoding: dict) -> float:
        return encoding["scale"] * (2 ** encoding["bitwidth"] - 1)

    widened = [n for n in path if n in encodings["a16w8"] and width(encodings["a16w8"][n]) > 1.9 * width(encodings["a16w8-none"][n])]
    assert widened == [n for n in path if n in encodings["a16w8"]] and widened, (path, widened)
    # the chunk input is not a state: its range is the recorded one with or without headroom
    assert spans["a16w8"]["feats"] == spans["a16w8-none"]["feats"]
    assert spans["a8w8-kept"]["h_in"] == spans["a8w8"]["h_in"]


class _Reversed:
    """A stand-in for the confirming runtime: the CPU EP with every output's integers reversed (a wrong transcript)."""

    def __new__(cls, artifact_dir: Path):
        from pipeline.backends.qnn.session import QdqCpuSession

        class Reversed(QdqCpuSession):
            def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                raw = super()._invoke(feeds)
                for o in self.spec.outputs:
                    name = self.contract.bindings[o.name].name
                    raw[name] = np.iinfo(raw[name].dtype).max - raw[name]
                return raw

        return Reversed(artifact_dir)


def test_a_choice_the_confirming_runtime_rejects_sends_the_search_on_and_is_never_accepted(
    tiny_target: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.backends.qnn.recipe import QnnQuantizer
    from pipeline.backends.qnn.session import QdqCpuSession

    # the first confirmation fails, later ones run the CPU EP itself (so the next choice holds)
    calls: list[Path] = []
    monkeypatch.setattr(QnnQuantizer, "confirm_session", lambda self, d, options: (_Reversed(d) if not calls else QdqCpuSession(d), calls.append(d))[0])
    # bounds the proxy is easily held to: the first candidate that meets them is chosen, then rejected
    loose = {"max_cer_vs_reference": 1e9, "min_sqnr_db": 0.0, "max_rel": 1e9, "max_glitch_rel": 1e9, "max_drift_ratio": 1e9, "min_cosine": -1.0}
    base = tiny_target["graph"].nodes["quant-search:qnn-a8w8@20ms"].config
    override = base.default_tolerance.model_copy(update=loose)
    search, logs = run_search(tiny_target, tmp_path / "rejected", tolerance_override=override, default_tolerance=override)
    first, *rest = [e for e in search["evaluations"] if "confirmed" in e]
    assert not first["confirmed"]["passed"] and not first["passed"]
    assert first["failures"] and all(f.startswith(("on QNN HTP simulator: clean: ", "on QNN HTP simulator: noisy: ")) for f in first["failures"]), first["failures"]
    assert any("misses the goal there, the search goes on" in line for line in logs), logs
    # the search went on from the rejected candidate: a new candidate (one more unit), confirmed, accepted
    assert rest and rest[-1]["passed"] and rest[-1]["confirmed"]["passed"] and rest[-1]["recipe"] != first["recipe"]
    assert search["evaluations"].index(rest[-1]) > search["evaluations"].index(first)
    assert search["met"] and search["confirmation"]["confirmations_run"] == 2 and search["confirmed"] == rest[-1]["confirmed"]
    recipe = json.loads((tmp_path / "rejected" / "recipe.json").read_text())
    assert recipe == rest[-1]["recipe"] | {"source": "search"}

    # every confirmation fails: after max_confirmations the proxy's next pick is not taken on trust; the candidate
    # closest to the goal on the simulator is kept, reported unmet with its simulator figures
    monkeypatch.setattr(QnnQuantizer, "confirm_session", lambda self, d, options: _Reversed(d))
    search, logs = run_search(tiny_target, tmp_path / "unmet", tolerance_override=override, default_tolerance=override, max_confirmations=2)
    rejected = [e for e in search["evaluations"] if "confirmed" in e]
    assert len(rejected) == 2 and not any(e["passed"] or e["confirmed"]["passed"] for e in rejected)
    assert not search["met"] and search["confirmation"]["confirmations_run"] == 2
    kept = min(rejected, key=lambda e: (e["confirmed"]["score"], e["size_bytes"]))
    assert search["confirmed"] == kept["confirmed"] and search["after"] == kept["conditions"]
    assert json.loads((tmp_path / "unmet" / "recipe.json").read_text()) == kept["recipe"] | {"source": "search"}
    assert "goal NOT met on held-out speech on QNN HTP simulator" in logs[-1], logs[-1]
