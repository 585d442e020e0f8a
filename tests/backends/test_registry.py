"""The backend registry: every backend has tests, the manifest knows backends only through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.backends import REGISTRY, get_backend
from pipeline.backends.base import Backend
from pipeline.errors import UserError
from pipeline.manifest import load_manifest
from tests.conftest import write_manifest

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_backend_has_a_test_module_and_a_complete_object(name: str) -> None:
    assert (TESTS / f"test_{name}.py").is_file(), f"backend {name!r} is registered but tests/backends/test_{name}.py does not exist"
    backend = get_backend(name)
    assert isinstance(backend, Backend) and backend.name == name
    assert backend.precisions and backend.tools and backend.description
    for precision in backend.precisions:
        assert precision.description and precision.tolerance is not None
        # every default bounds the error's magnitude, not only its direction
        t = precision.tolerance
        assert t.max_abs is not None or t.max_rel is not None, (name, precision.name)
        assert t.min_sqnr_db is not None and t.state_one_step_max_rel is not None and t.max_drift_ratio is not None
    assert len(set(backend.precision_names)) == len(backend.precision_names)


def test_unknown_backend_and_precision_name_what_is_known(tmp_path: Path, tiny_manifest: dict) -> None:
    from pipeline.cli import main

    tiny_manifest["backends"] = {"litrt": ["fp32"]}
    path = write_manifest(tmp_path / "m.yaml", **tiny_manifest)
    with pytest.raises(UserError) as caught:
        load_manifest(path)
    message = str(caught.value)
    assert "unknown backend 'litrt'" in message and "did you mean 'litert'" in message and "onnxruntime" in message, message
    assert main(["build", str(path)]) == 2

    tiny_manifest["backends"] = {"litert": ["int4"]}
    with pytest.raises(UserError) as caught:
        load_manifest(write_manifest(tmp_path / "m.yaml", **tiny_manifest))
    assert "cannot build ['int4']" in str(caught.value) and "int16x8" in str(caught.value)


def test_backend_options_are_a_manifest_section_with_did_you_mean(tmp_path: Path, tiny_manifest: dict) -> None:
    tiny_manifest["backends"] = {"litert": ["fp32"]}
    tiny_manifest["litert"] = {"allow_flex_op": True}
    with pytest.raises(UserError) as caught:
        load_manifest(write_manifest(tmp_path / "m.yaml", **tiny_manifest))
    assert "litert.allow_flex_op: unknown field; did you mean 'allow_flex_ops'?" in str(caught.value), str(caught.value)
    tiny_manifest["litert"] = {"allow_flex_ops": True}
    assert load_manifest(write_manifest(tmp_path / "m.yaml", **tiny_manifest)).backend_options("litert").allow_flex_ops


def test_calibrated_precisions_need_calibration_data(tmp_path: Path, tiny_manifest: dict) -> None:
    tiny_manifest["backends"] = {"litert": ["fp32", "int8"]}
    with pytest.raises(UserError) as caught:
        load_manifest(write_manifest(tmp_path / "m.yaml", **tiny_manifest))
    assert "litert.int8" in str(caught.value) and "calibration" in str(caught.value)


def test_adding_a_backend_changes_nothing_outside_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_manifest: dict) -> None:
    """A backend registered by one line plans, verifies and reports through the generic code."""
    from pipeline import execute as executor
    from pipeline.backends import get_backend as cached
    from pipeline.cache import Cache
    from pipeline.manifest import manifest_model
    from pipeline.plan import plan

    monkeypatch.setitem(REGISTRY, "mirror", "tests.backends.mirror_backend:BACKEND")
    cached.cache_clear()
    manifest_model.cache_clear()
    try:
        tiny_manifest["backends"] = {"mirror": ["fp32"]}
        tiny_manifest["mirror"] = {"note": "options of a backend the pipeline never heard of"}
        graph = plan(load_manifest(write_manifest(tmp_path / "m.yaml", **tiny_manifest)))
        built = executor.execute(graph, Cache(tmp_path / "cache"), "tiny")
        import json

        report = json.loads((built["report"].path / "report.json").read_text())
        (variant,) = report["variants"]
        assert variant["name"] == "mirror-fp32@20ms" and variant["passed"], variant["failures"]
        assert variant["runtime"] == "onnxruntime, under another name" and not variant["device_latency"]
    finally:
        cached.cache_clear()
        manifest_model.cache_clear()
