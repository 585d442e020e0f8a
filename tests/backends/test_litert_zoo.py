"""Every zoo model through every LiteRT precision, over the whole verification split (issue 4's acceptance).

lstm_ctc is covered by tests/stages/test_android_target.py. Quantized variants that break a
model are reported by verify as failures, not hidden; what must hold for every model is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


from pipeline import execute as executor
from pipeline.cache import Cache
from pipeline.manifest import load_manifest
from pipeline.plan import plan
from tests.conftest import REPO, write_manifest


@pytest.mark.parametrize("name", ["dscnn_ctc", "conformer_ctc", "kws"])
def test_zoo_model_litert_variants(name: str, tmp_path: Path, cache_dir: Path) -> None:
    nightly = yaml.safe_load((REPO / "targets" / "nightly" / f"{name}.yaml").read_text())
    manifest = {
        **nightly,
        "name": f"zoo-litert-{name}",
        "chunk_ms": [20],
        "backends": {"litert": ["fp32", "fp16", "int8", "int16x8"]},
        # the nightly target's bounds for the precisions built here (it also bounds other backends' precisions)
        "tolerances": {k: v for k, v in nightly.get("tolerances", {}).items() if k.removeprefix("litert.") in ("fp32", "fp16", "int8", "int16x8")},
    }
    manifest["model"]["checkpoint"] = str(REPO / "models" / "checkpoints" / f"{name}.safetensors")
    for section in ("verification", "calibration"):
        manifest[section]["corpus"] = str(REPO / "models" / "corpus")
    graph = plan(load_manifest(write_manifest(tmp_path / "m.yaml", **manifest)))
    built = executor.execute(graph, Cache(cache_dir), manifest["name"])
    variants = {v["precision"]: v for v in json.loads((built["report"].path / "report.json").read_text())["variants"]}
    for precision, v in variants.items():
        assert v["audio_seconds"] >= 300
        assert v["ops"] and not [op for op in v["ops"] if op.startswith("Flex")], (precision, v["ops"])
    assert variants["fp32"]["passed"] and variants["fp16"]["passed"], (variants["fp32"]["failures"], variants["fp16"]["failures"])
    # the bound each variant was held to is recorded with it; a model that needs another says so in default_tolerances()
    from pipeline.model import build_model
    from pipeline.manifest import ModelRef

    model = build_model(ModelRef(factory=manifest["model"]["factory"], checkpoint=manifest["model"]["checkpoint"]))
    fp32_bound = getattr(model, "default_tolerances", dict)().get("fp32", {}).get("max_abs", 1e-4)
    assert variants["fp32"]["tolerance"]["max_abs"] == fp32_bound
    assert all(o["max_abs"] <= fp32_bound for o in variants["fp32"]["outputs"].values()), variants["fp32"]["outputs"]
    if name == "kws":
        assert all("decision_agreement" in v for v in variants.values())
    else:
        assert abs(variants["int16x8"]["cer"] - variants["fp32"]["cer"]) <= 0.02
        assert variants["int16x8"]["cer_vs_reference"] <= variants["int8"]["cer_vs_reference"]
