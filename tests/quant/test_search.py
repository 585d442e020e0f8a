"""The recipe search, on a quantizer that puts every op's values on a 5-bit grid (tests/quant/fakequant_backend.py):
real onnxruntime runs, a tiny LSTM, a few seconds of held-out speech. What it must do: leave a stock recipe that holds
alone, find the state recurrence and the ops that break one that does not, stop when the bounds hold, give the same
recipe every time, be cached, rerun only itself and what follows when a bound changes, and plan nothing when pinned."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline import execute as executor
from pipeline.backends import REGISTRY
from pipeline.cache import Cache
from pipeline.manifest import load_manifest
from pipeline.plan import plan
from pipeline.quant.sensitivity import by_node, grid_sqnr, tensor_figures
from tests.conftest import CORPUS, tiny_checkpoint, write_manifest

SEARCH = "quant-search:fakeq-q@20ms"


@pytest.fixture(autouse=True)
def fakeq(monkeypatch: pytest.MonkeyPatch):
    from pipeline.backends import get_backend
    from pipeline.manifest import manifest_model

    monkeypatch.setitem(REGISTRY, "fakeq", "tests.quant.fakequant_backend:BACKEND")
    get_backend.cache_clear()
    manifest_model.cache_clear()
    yield
    get_backend.cache_clear()
    manifest_model.cache_clear()


def document(tmp: Path, **extra) -> dict:
    return {
        "name": "tiny-q",
        "model": {"factory": "models.lstm_ctc:build", "kwargs": {"hidden": 32, "layers": 1}, "checkpoint": str(tiny_checkpoint(tmp / "tiny.safetensors"))},
        "chunk_ms": [20],
        "backends": {"fakeq": ["q"]},
        "verification": {"corpus": str(CORPUS), "split": "verification", "max_seconds": 10},
        "calibration": {"corpus": str(CORPUS), "split": "calibration", "max_samples": 300},
        "quantization": {"held_out_seconds": 8},
        **extra,
    }


def build(doc: dict, tmp: Path, cache: Path) -> tuple[dict, dict[str, bool], list[str]]:
    hits: dict[str, bool] = {}
    events = executor.BuildEvents(finished=lambda node_id, hit, seconds, note: hits.__setitem__(node_id, hit))
    graph = plan(load_manifest(write_manifest(tmp / "m.yaml", **doc)))
    return executor.execute(graph, Cache(cache), "tiny-q", events), hits, list(graph.nodes)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from pipeline.backends import get_backend
    from pipeline.manifest import manifest_model

    tmp = tmp_path_factory.mktemp("search")
    saved = dict(REGISTRY)
    REGISTRY["fakeq"] = "tests.quant.fakequant_backend:BACKEND"
    get_backend.cache_clear()
    manifest_model.cache_clear()
    try:
        doc = document(tmp)
        built, hits, nodes = build(doc, tmp, tmp / "cache")
    finally:
        REGISTRY.clear()
        REGISTRY.update(saved)
        get_backend.cache_clear()
        manifest_model.cache_clear()
    search = json.loads((built[SEARCH].path / "search.json").read_text())
    report = json.loads((built["report"].path / "report.json").read_text())
    return {"tmp": tmp, "doc": doc, "built": built, "hits": hits, "nodes": nodes, "search": search, "report": report}


def test_the_search_keeps_what_breaks_the_stock_recipe_and_stops_when_the_bounds_hold(searched: dict) -> None:
    evaluations = searched["search"]["evaluations"]
    stock, chosen = evaluations[0], searched["search"]
    assert stock["label"] == "stock" and not stock["passed"], "the 5-bit stock recipe must fail the 13 dB bound, or the test shows nothing"
    assert chosen["met"]
    assert evaluations[-1]["passed"] and all(not e["passed"] for e in evaluations[:-1]), "the search must stop at the first recipe that holds"
    recipe = json.loads((searched["built"][SEARCH].path / "recipe.json").read_text())
    assert recipe["source"] == "search" and "c_in" in recipe["keep_states"]  # the cell state's recurrence is what breaks first
    assert "state h_in" in chosen["effects"] and "not_applicable" in chosen["effects"]["state h_in"]  # h goes through a matmul
    # the chosen recipe's held-out figures are better than the stock one's, on the variant's own runtime
    assert chosen["after"]["clean"]["sqnr_db"]["logits"] > 13.0 > chosen["before"]["clean"]["sqnr_db"]["logits"]


def test_the_recipe_reaches_the_contract_the_verification_and_the_report(searched: dict) -> None:
    (variant,) = searched["report"]["variants"]
    assert variant["passed"], variant["failures"]
    q = variant["quantization"]
    recipe = json.loads((searched["built"][SEARCH].path / "recipe.json").read_text())
    assert (q["keep_states"], q["keep_ops"], q["source"]) == (recipe["keep_states"], recipe["keep_ops"], "search")
    assert set(q["covered"]) >= set(q["keep_ops"]) and len(q["covered"]) > len(q["keep_ops"])  # the recurrence's ops, by structure
    report_dir = searched["built"]["report"].path
    assert "## Quantization recipes" in (report_dir / "report.md").read_text()
    assert (report_dir / "sensitivity.png").stat().st_size > 1000


def test_the_report_gives_the_recipes_latency_cost_timed_by_the_search(searched: dict) -> None:
    from pipeline.report.stage import search_role, variant_inputs

    report_node = plan(load_manifest(write_manifest(searched["tmp"] / "again.yaml", **searched["doc"]))).nodes["report"]
    assert dict(report_node.inputs)[search_role("fakeq-q@20ms")] == SEARCH  # the search's timings reach the report ...
    assert [role for role, _ in variant_inputs(report_node)] == ["fakeq-q@20ms"]  # ... and it is no variant of its own
    timings = json.loads((searched["built"][SEARCH].path / "timings.json").read_text())["latency"]
    (variant,) = searched["report"]["variants"]
    assert variant["quantization"]["latency"] == timings
    assert timings["stock_call_ms_p50"] > 0 and timings["chosen_call_ms_p50"] > 0 and timings["runtime"]
    ratio = timings["chosen_call_ms_p50"] / timings["stock_call_ms_p50"]
    row = next(line for line in (searched["built"]["report"].path / "report.md").read_text().splitlines() if line.startswith("| fakeq-q@20ms | search"))
    assert f"x{ratio:.2f} ({timings['chosen_call_ms_p50']:.3f} vs {timings['stock_call_ms_p50']:.3f} ms" in row, row


def test_a_second_build_reuses_the_recipe_without_searching(searched: dict) -> None:
    _, hits, _ = build(searched["doc"], searched["tmp"], searched["tmp"] / "cache")
    assert all(hits.values()), [n for n, hit in hits.items() if not hit]


def test_the_same_inputs_give_the_same_recipe(searched: dict, tmp_path: Path) -> None:
    built, _, _ = build(searched["doc"], searched["tmp"], tmp_path / "other-cache")
    for name in ("recipe.json", "search.json"):
        assert (built[SEARCH].path / name).read_bytes() == (searched["built"][SEARCH].path / name).read_bytes(), name


def test_changing_a_bound_reruns_only_the_search_and_what_follows(searched: dict) -> None:
    changed = {**searched["doc"], "tolerances": {"q": {"min_sqnr_db": 12.0}}}
    _, hits, _ = build(changed, searched["tmp"], searched["tmp"] / "cache")
    rebuilt = sorted(n for n, hit in hits.items() if not hit)
    assert SEARCH in rebuilt and "verify:fakeq-q@20ms" in rebuilt and "report" in rebuilt
    assert not [n for n in rebuilt if n.split("@")[0] in ("trace", "onnx", "simplify", "calibrate", "reference")], rebuilt


def test_a_hand_list_pins_the_recipe_and_plans_no_search(searched: dict) -> None:
    pinned = {**searched["doc"], "fakeq": {"keep_float_states": ["c_in"]}}
    graph = plan(load_manifest(write_manifest(searched["tmp"] / "pinned.yaml", **pinned)))
    assert not [n for n in graph.nodes if n.startswith("quant-search")]
    off = {**searched["doc"], "quantization": {"search": False}}
    graph = plan(load_manifest(write_manifest(searched["tmp"] / "off.yaml", **off)))
    assert not [n for n in graph.nodes if n.startswith("quant-search")]


def test_a_wide_range_over_small_values_ranks_first() -> None:
    rng = np.random.default_rng(0)
    small = rng.normal(0, 1, 4096)
    spiky = np.concatenate([small, [300.0]])  # a cell state: mostly small, sometimes huge
    ranked = by_node(sorted([tensor_figures("c", "Add", "cell", [spiky], 8), tensor_figures("x", "MatMul", "proj", [small], 8)], key=lambda f: f["sqnr_alone_db"]))
    assert [f["node"] for f in ranked] == ["cell", "proj"]
    assert grid_sqnr(small, 8, float(small.min()), float(small.max())) > 35 > ranked[0]["sqnr_alone_db"]
    assert grid_sqnr(np.zeros(4), 8, 0.0, 0.0) == math.inf


def test_an_a16w8_weight_ranks_by_what_it_alone_does_to_the_outputs(tmp_path: Path) -> None:
    """QNN's a16w8 units are weights kept at 16 bits; the ranking is the error each weight alone on its 8-bit grid adds
    at the model's outputs: a fine grid on the path that makes the output ranks above a coarse one on a path that
    hardly reaches it, whatever the weights' own SQNR says."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pipeline.backends.qnn.qdq import QdqConfig
    from pipeline.backends.qnn.recipe import fake_quantized, weight_sensitivity
    from pipeline.cache import Artifact
    from pipeline.contract import Contract, identity_bindings, write_contract
    from pipeline.spec import StreamSpec

    rng = np.random.default_rng(0)
    first = rng.normal(0, 1, (80, 8)).astype(np.float32)
    first[0, 0] = 40.0  # one outlier: a coarse grid for the rest (the lower weight SQNR) ...
    second = rng.normal(0, 1, (80, 8)).astype(np.float32)
    # ... but it reaches the output scaled by 1e-3, next to the second's full-scale path
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"], name="small_path"),
        helper.make_node("Mul", ["a", "g1"], ["b"], name="gain1"),
        helper.make_node("MatMul", ["x", "w2"], ["c"], name="large_path"),
        helper.make_node("Add", ["b", "c"], ["y"], name="sum"),
    ]
    inits = [numpy_helper.from_array(first, "w1"), numpy_helper.from_array(second, "w2"), numpy_helper.from_array(np.float32(1e-3), "g1")]
    io = lambda name, width: helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, width])  # noqa: E731
    graph = helper.make_graph(nodes, "two", [io("x", 80)], [io("y", 8)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "model.onnx"))
    spec = StreamSpec.model_validate(
        {
            "chunk_ms": 20,
            "frontend": {"kind": "logmel"},
            "inputs": [{"name": "x", "shape": [2, 80], "time_axis": 0}],
            "outputs": [{"name": "y", "shape": [2, 8], "time_axis": 0}],
        }
    )
    contract = Contract(target="t", model="tests", backend="onnxruntime", precision="fp32", artifact="model.onnx", stream=spec, bindings=identity_bindings(spec))
    write_contract(tmp_path, contract)
    samples = [{"x": rng.normal(0, 1, (2, 80)).astype(np.float32)} for _ in range(16)]
    ranked = weight_sensitivity({"model": Artifact("qnn-legalize", "", tmp_path, "")}, QdqConfig(precision="a16w8"), samples)
    assert [f["node"] for f in ranked] == ["large_path", "small_path"], ranked
    by_name = {f["node"]: f for f in ranked}
    assert by_name["small_path"]["weight_sqnr_db"] < by_name["large_path"]["weight_sqnr_db"]  # the weights' own order is the other way
    # the grid: asymmetric min-max, 256 levels, zero exact; one scale per output channel where asked
    grid = fake_quantized(first, 8, None)
    assert np.abs(grid - first).max() <= (first.max() - first.min()) / 255 / 2 + 1e-6 and np.unique(grid).size <= 256
    per_channel = fake_quantized(first, 8, 0)
    assert np.abs(per_channel[1:] - first[1:]).max() < np.abs(grid[1:] - first[1:]).max()  # channels without the outlier: a finer grid
