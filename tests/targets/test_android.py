"""`make android`'s target: issue 4's acceptance, measured over the whole verification split."""

from __future__ import annotations

import json
from pathlib import Path


from pipeline import execute as executor
from pipeline.cache import Cache
from pipeline.manifest import load_manifest
from pipeline.plan import plan
from tests.conftest import REPO


def test_android_target_meets_acceptance_and_rebuilds_nothing(cache_dir: Path) -> None:
    graph = plan(load_manifest(REPO / "targets" / "android.yaml"))
    built = executor.execute(graph, Cache(cache_dir), "android")
    report = json.loads((built["report"].path / "report.json").read_text())
    variants = {v["precision"]: v for v in report["variants"]}
    assert set(variants) == {"fp32", "fp16", "int8", "int16x8"}
    assert report["passed"], {p: v["failures"] for p, v in variants.items()}
    for precision, v in variants.items():
        assert v["audio_seconds"] >= 300 and v["backend"] == "litert"
        assert v["ops"] and not [op for op in v["ops"] if op.startswith("Flex")], (precision, v["ops"])
        assert "cer_vs_reference" in v and v["size_bytes"] > 0
        assert v["rtf"] > 0 and v["latency_ms_p99"] >= v["latency_ms_p50"] > 0
    assert variants["fp32"]["outputs"]["logits"]["max_abs"] <= 1e-4
    assert variants["fp16"]["outputs"]["logits"]["one_step_max_abs"] <= 1e-2
    # int16x8 is the speech-friendly choice: within 2 CER points of fp32, and no worse than int8
    assert abs(variants["int16x8"]["cer"] - variants["fp32"]["cer"]) <= 0.02
    assert variants["int16x8"]["cer_vs_reference"] <= variants["int8"]["cer_vs_reference"]
    # no hand list in the target: int8's recipe is searched, and what breaks stock int8 (the cell state) is what it keeps
    recipe = variants["int8"]["quantization"]
    assert recipe["source"] == "search" and "c_in" in recipe["keep_states"], recipe
    assert recipe["search"]["before"]["clean"]["cer_vs_reference"] > 0.5 > recipe["search"]["after"]["clean"]["cer_vs_reference"]
    # every variant also streamed the noisy, reverberant copy, on its own state, and holds its bounds there too;
    # the 8-bit-weight variants within 1 CER point of PyTorch's error rate on both (issue 12's acceptance)
    for precision, v in variants.items():
        assert v["noisy"]["passed"] and v["noisy"]["audio_seconds"] >= 300, (precision, v["noisy"]["failures"])
    for precision in ("int8", "int16x8"):
        assert variants[precision]["cer_increase"] <= 0.01 and variants[precision]["noisy"]["cer_increase"] <= 0.01, precision
    # quantized with float I/O: the state feeds straight back, and the contract says so
    contract_dir = built[dict(graph.nodes["verify:litert-int8@20ms"].inputs)["model"]].path
    contract = json.loads((contract_dir / "contract.json").read_text())
    assert contract["backend"] == "litert" and contract["artifact"] == "model.tflite"
    assert {b["dtype"] for b in contract["bindings"].values()} == {"float32"}

    hits: dict[str, bool] = {}
    executor.execute(graph, Cache(cache_dir), "android", executor.BuildEvents(finished=lambda n, hit, s, note: hits.__setitem__(n, hit)))
    assert all(hits.values()), [n for n, hit in hits.items() if not hit]
