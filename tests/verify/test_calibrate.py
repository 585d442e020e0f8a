"""calibrate records the fit part clean and then each augmented copy, each from the initial state, and its ranges cover them all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.dag import StageContext
from pipeline.verify.calibrate import CalibrateConfig, CalibrateStage
from pipeline.verify.records import RANGES_FILE, SAMPLES_FILE
from tests.conftest import CORPUS, write_manifest


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory):
    from pipeline import execute as executor
    from pipeline.cache import Cache
    from pipeline.dag import Graph
    from pipeline.manifest import load_manifest
    from pipeline.plan import plan
    from tests.conftest import tiny_checkpoint

    tmp = tmp_path_factory.mktemp("calibrate")
    manifest = write_manifest(
        tmp / "m.yaml",
        name="tiny",
        model={"factory": "models.lstm_ctc:build", "kwargs": {"hidden": 32, "layers": 1},
               "checkpoint": str(tiny_checkpoint(tmp / "tiny.safetensors"))},
        chunk_ms=[20],
        backends={"litert": ["int8"]},
        verification={"corpus": str(CORPUS), "split": "verification", "max_seconds": 5},
        calibration={"corpus": str(CORPUS), "split": "calibration", "max_samples": 100},
    )
    graph = plan(load_manifest(manifest))
    built = executor.execute(Graph([graph.nodes["trace@20ms"]]), Cache(tmp / "cache"), "tiny")
    return graph, built["trace@20ms"]


def _calibrate(config: CalibrateConfig, model, out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    out.mkdir()
    CalibrateStage.run(config, {"model": model}, out, StageContext("calibrate@20ms"))
    return json.loads((out / RANGES_FILE).read_text()), dict(np.load(out / SAMPLES_FILE))


def test_planned_calibration_streams_the_fit_part_and_two_augmented_copies(traced) -> None:
    graph, _ = traced
    config = graph.nodes["calibrate@20ms"].config
    assert (config.data.part, config.data.held_out_every, config.data.condition) == ("fit", 4, "clean")
    assert config.augmented_copies == 2


def test_augmented_copies_widen_the_ranges_and_are_sampled(traced, tmp_path: Path) -> None:
    graph, model = traced
    # 8 s of the fit part keeps the test short; the copies are of the same utterances
    data = graph.nodes["calibrate@20ms"].config.data.model_copy(update={"max_seconds": 8.0})
    clean, clean_samples = _calibrate(CalibrateConfig(data=data, max_samples=60, augmented_copies=0), model, tmp_path / "clean")
    mixed, samples = _calibrate(CalibrateConfig(data=data, max_samples=60, augmented_copies=2), model, tmp_path / "mixed")

    assert [(s["condition"], s["copy"]) for s in mixed["streams"]] == [("clean", 0), ("augmented", 1), ("augmented", 2)]
    assert mixed["steps"] == sum(s["steps"] for s in mixed["streams"]) > clean["steps"] == clean["streams"][0]["steps"]
    assert mixed["streams"][0] == clean["streams"][0] | {"samples": mixed["streams"][0]["samples"]}
    # speed-changed copies are as long as their speed makes them, not as long as the clean stream
    assert mixed["streams"][1]["seconds"] != mixed["streams"][0]["seconds"]
    # samples come from every stream, evenly spaced over all of them
    assert sum(s["samples"] for s in mixed["streams"]) == 60 and all(s["samples"] >= 15 for s in mixed["streams"])
    # plus the calls at which a state reaches its extremes, unless an evenly spaced sample already is one
    assert mixed["samples"] == 60 + len(mixed["extreme_samples"]) and len(mixed["extreme_samples"]) <= 8
    assert {name: v.shape[0] for name, v in samples.items()} == dict.fromkeys(clean_samples, mixed["samples"])
    # the file formats other stages read are unchanged
    assert set(mixed) >= {"steps", "samples", "ranges"} and set(samples) == set(clean_samples)

    for name, bounds in clean["ranges"].items():
        assert mixed["ranges"][name]["min"] <= bounds["min"] and mixed["ranges"][name]["max"] >= bounds["max"]
    widened = [n for n, b in clean["ranges"].items() if mixed["ranges"][n]["min"] < b["min"] or mixed["ranges"][n]["max"] > b["max"]]
    assert {"feats", "logits"} <= set(widened), widened  # louder, noisier input; outputs that follow it
    # each copy is a closed loop from the initial state: the first recorded state is the initial one
    assert np.all(samples["c_in"][0] == 0)


def test_the_samples_hold_every_state_input_range(traced, tmp_path: Path) -> None:
    """A quantizer measuring ranges on the samples gives each state input the range it ranges over in the stream (the
    state-range guards' requirement), however few samples are kept."""
    graph, model = traced
    data = graph.nodes["calibrate@20ms"].config.data.model_copy(update={"max_seconds": 8.0})
    ranges, samples = _calibrate(CalibrateConfig(data=data, max_samples=5, augmented_copies=1), model, tmp_path / "few")
    assert ranges["extreme_samples"], ranges
    for name in ("h_in", "c_in"):
        assert float(samples[name].min()) == ranges["ranges"][name]["min"] and float(samples[name].max()) == ranges["ranges"][name]["max"], name
