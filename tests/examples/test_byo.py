"""Models written the way users write them (examples/byo): each builds, from its own directory, for every
backend and precision of the registry, with no edit to its module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.backends import REGISTRY, get_backend
from pipeline.cli import main
from tests.conftest import CORPUS, REPO

EXAMPLES = sorted(p.parent.name for p in (REPO / "examples" / "byo").glob("*/target.yaml"))


def test_there_are_examples_of_every_kind_and_each_has_a_test() -> None:
    assert len(EXAMPLES) >= 5, EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_builds_from_its_own_directory_for_every_backend_and_precision(name: str, tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    # the example directory, copied out of the repo as a user's project would be, streaming a shorter stretch of speech
    home = tmp_path / name
    shutil.copytree(REPO / "examples" / "byo" / name, home)
    manifest = yaml.safe_load((home / "target.yaml").read_text())
    manifest["backends"] = {backend: get_backend(backend).precision_names for backend in REGISTRY}
    # 8 s and 3 x 50 teacher-forced calls: the HTP simulator takes 5-120 ms a call of these models (lstm_logmel's
    # two qnn variants alone took 3 min over 20 s), and every backend streams the same speech
    # the clean stream only (the noisy copy doubles every stream; nightly and `make acceptance` stream both)
    manifest["verification"] = {"corpus": str(CORPUS), "split": "verification", "max_seconds": 8, "teacher_steps": 50, "noisy": False}
    manifest["calibration"] = {"corpus": str(CORPUS), "split": "calibration", "max_samples": 300}
    # every quantized variant still searches its recipe, on a small budget: 4 s of held-out speech, 3 candidates, one
    # confirmation of 2 s on the HTP simulator (a search of random weights that misses its goal runs its whole budget)
    manifest["quantization"] = {"held_out_seconds": 4, "max_evaluations": 3, "max_ops": 2, "confirm_seconds": 2, "max_confirmations": 1}
    (home / "target.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    monkeypatch.chdir(home)
    code = main(["build", "target.yaml", "--out", str(tmp_path / "out"), "--jobs", "1"])
    assert code in (0, 1), code  # built and verified everywhere; a quantized variant of random weights may miss its bounds
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    variants = {(v["backend"], v["precision"]): v for v in report["variants"]}
    assert set(variants) == {(b, p) for b in REGISTRY for p in get_backend(b).precision_names}
    for key, v in variants.items():
        assert v["status"] != "error", (key, v.get("error"))
        assert v["export"]["route"] == "torch.export", v["export"]
        assert not [op for op in v["ops"] if op.startswith("Flex")], (key, v["ops"])
    for backend in [b for b in REGISTRY if "fp32" in get_backend(b).precision_names]:
        fp32 = variants[(backend, "fp32")]
        assert fp32["passed"], (backend, fp32["failures"])
        assert all(o["max_abs"] <= 1e-4 for o in fp32["outputs"].values()), fp32["outputs"]
    if ("litert", "fp16") in variants:
        assert variants[("litert", "fp16")]["passed"], variants[("litert", "fp16")]["failures"]
    # the contract records each tensor's layout in the artifact: a 3-D tensor a converter re-laid out says so
    if any(o["kind"] == "probability" for o in manifest["io"]["outputs"]):
        assert all("decision_agreement" in v for v in variants.values())
        assert variants[("onnxruntime", "fp32")]["decision_agreement"] == 1.0
    contract = json.loads((tmp_path / "out" / variants[("litert", "fp32")]["name"] / "contract.json").read_text())
    assert contract["export"]["route"] == "torch.export"
    for tensor, binding in contract["bindings"].items():
        declared = next(
            (list(i["shape"]) for i in contract["stream"]["inputs"] + contract["stream"]["outputs"] if i["name"] == tensor),
            next((list(s["shape"]) for s in contract["stream"]["states"] if tensor in (s["input"], s["output"])), None),
        )
        if binding["permutation"] is None:
            assert list(binding["shape"]) == declared, (tensor, binding)
        else:
            assert [declared[k] for k in binding["permutation"]] == list(binding["shape"]), (tensor, binding)
