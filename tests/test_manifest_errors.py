"""Bad manifests: exit 2, one message naming the file and the field, no traceback, nothing built."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.cli import main
from tests.conftest import write_manifest


def _mutate(manifest: dict, tmp_path: Path, case: str) -> dict:
    m = copy.deepcopy(manifest)
    if case == "unknown field":
        m["backend"] = m.pop("backends")
    elif case == "wrong type":
        m["chunk_ms"] = "twenty"
    elif case == "chunk not whole frames":
        m["chunk_ms"] = [25]
    elif case == "chunk in two units":
        m["chunk_samples"] = [320]
    elif case == "chunk_samples for a model counting in ms":
        m["chunk_samples"] = [320]
        del m["chunk_ms"]
    elif case == "io chunk not whole hops":
        del m["chunk_ms"]
        m["io"] = {
            "chunk_samples": 512,
            "frontend": {"kind": "logmel"},
            "inputs": [{"name": "feats", "shape": [3, 80], "time_axis": 0}],
            "states": [{"input": "h_in", "output": "h_out", "shape": [1, 32]}, {"input": "c_in", "output": "c_out", "shape": [1, 32]}],
            "outputs": [{"name": "logits", "shape": [3, 29], "time_axis": 0}],
        }
    elif case == "missing checkpoint":
        m["model"]["checkpoint"] = str(tmp_path / "nowhere.safetensors")
    elif case == "factory does not import":
        m["model"]["factory"] = "models.no_such_model:build"
    elif case == "factory malformed":
        m["model"]["factory"] = "models.lstm_ctc.build"
    elif case == "factory not callable":
        m["model"]["factory"] = "models.lstm_ctc:builder"
    elif case == "unknown backend":
        m["backends"] = {"tflite": ["fp32"]}
    elif case == "unsupported precision":
        m["backends"] = {"onnxruntime": ["int8"]}
    elif case == "missing model":
        del m["model"]
    elif case == "bad kwargs":
        m["model"]["kwargs"] = {"hidden_size": 32}
    elif case == "checkpoint does not fit":
        m["model"]["kwargs"] = {"hidden": 64, "layers": 1}
    elif case == "declared output shape wrong":
        m["io"] = {
            "chunk_ms": 20,
            "frontend": {"kind": "logmel"},
            "inputs": [{"name": "feats", "shape": [2, 80], "time_axis": 0}],
            "states": [{"input": "h_in", "output": "h_out", "shape": [1, 32]}, {"input": "c_in", "output": "c_out", "shape": [1, 32]}],
            "outputs": [{"name": "logits", "shape": [2, 30], "time_axis": 0}],
        }
    elif case == "tolerance typo":
        m["tolerances"] = {"fp32": {"maxabs": 1e-5}}
    elif case == "missing corpus":
        m["verification"]["corpus"] = str(tmp_path / "no-corpus")
    elif case == "corpus and audio":
        m["verification"]["audio"] = str(tmp_path)
    elif case == "neither corpus nor audio":
        m["verification"] = {"max_seconds": 20}
    elif case == "split with audio":
        m["verification"] = {"audio": str(tmp_path), "split": "verification"}
    elif case == "empty audio directory":
        (tmp_path / "no-audio").mkdir()
        m["verification"] = {"audio": "no-audio"}
    elif case == "missing transcripts":
        (tmp_path / "speech").mkdir()
        sf.write(str(tmp_path / "speech" / "a.wav"), np.zeros(1600, np.float32), 16000)
        m["verification"] = {"audio": "speech", "transcripts": "absent.tsv"}
    elif case == "quantized without calibration":
        m["backends"] = {"litert": ["int8"]}
    elif case == "not a checkpoint":
        bogus = tmp_path / "bogus.safetensors"
        bogus.write_bytes(b"this is not a tensor file")
        m["model"]["checkpoint"] = str(bogus)
    return m


CASES = {
    "unknown field": "backend: unknown field; did you mean 'backends'?",
    "wrong type": "chunk_ms",
    "chunk not whole frames": "chunk_ms: chunk length 25 ms is not a positive multiple",
    "chunk in two units": "chunk_ms [20] and chunk_samples [320] are both listed: list the chunk lengths in one unit",
    "chunk_samples for a model counting in ms": "chunk_samples: the manifest lists chunk_samples but models.lstm_ctc:build's streaming_spec takes no chunk_samples parameter (it takes chunk_ms)",
    "io chunk not whole hops": "io: chunk_samples: the log-mel frontend needs whole 160-sample hops (10 ms at 16000 Hz): expected a multiple of 160 samples, got 512",
    "missing checkpoint": "model.checkpoint: checkpoint file not found",
    "factory does not import": "model.factory: cannot import 'models.no_such_model'",
    "factory malformed": "model.factory: String should match pattern",
    "factory not callable": "model.factory: 'models.lstm_ctc' has no callable 'builder'",
    "unknown backend": "backends: unknown backend 'tflite'; did you mean 'litert'?",
    "unsupported precision": "backend 'onnxruntime' cannot build ['int8']",
    "missing model": "model: required field is missing",
    "bad kwargs": "model.kwargs:",
    "checkpoint does not fit": "model.checkpoint: tiny.safetensors does not fit",
    "declared output shape wrong": "io.outputs[0].shape: logits: declared shape (2, 30), forward returned (2, 29)",
    "tolerance typo": "tolerances.fp32.maxabs: unknown field; did you mean 'max_abs'?",
    "missing corpus": "verification.corpus: no corpus split",
    "corpus and audio": "verification: give exactly one of `corpus` (with `split`) and `audio`",
    "neither corpus nor audio": "verification: give exactly one of `corpus` (with `split`) and `audio` (with optional `transcripts`), found neither",
    "split with audio": "verification: `split` names a split of a `corpus`",
    "empty audio directory": "verification.audio: no WAV or FLAC files in directory",
    "missing transcripts": "verification.transcripts: transcripts file",
    "quantized without calibration": "need a `calibration` section",
    "not a checkpoint": "model.checkpoint: cannot read checkpoint",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_manifest_exits_2_naming_file_and_field(
    case: str, tmp_path: Path, tiny_manifest: dict, cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_manifest(tmp_path / "bad.yaml", **_mutate(tiny_manifest, tmp_path, case))
    code = main(["build", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(path) in err
    assert CASES[case] in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    # nothing half-built was published
    objects = cache_dir / "objects"
    published = [p for p in objects.rglob("*") if p.is_dir() and p.parent.parent == objects and not p.name.startswith(".")] if objects.exists() else []
    assert all((p / "artifact.json").is_file() for p in published)


def test_cli_process_prints_no_traceback(tmp_path: Path, tiny_manifest: dict, cache_dir: Path) -> None:
    path = write_manifest(tmp_path / "bad.yaml", **_mutate(tiny_manifest, tmp_path, "unknown field"))
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "build", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "did you mean 'backends'" in result.stderr and "Traceback" not in result.stderr


def test_manifest_file_missing_or_not_yaml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["build", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml: manifest not found" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert main(["build", str(broken)]) == 2
    assert "broken.yaml: not valid YAML" in capsys.readouterr().err


def raising_factory(**kwargs):
    raise ValueError("hidden must be a multiple of 8")


def test_a_factory_that_raises_is_the_users_error_naming_factory_and_line(tmp_path: Path, tiny_manifest: dict, cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    tiny_manifest["model"]["factory"] = "tests.test_manifest_errors:raising_factory"
    path = write_manifest(tmp_path / "bad.yaml", **tiny_manifest)
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert "model.factory" in err and "ValueError: hidden must be a multiple of 8" in err and "test_manifest_errors.py:" in err, err
    assert "bug in speechport" not in err
