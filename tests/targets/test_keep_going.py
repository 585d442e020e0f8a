"""A variant that cannot be built does not stop the others: the report lists every variant with its outcome."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from models.lstm_ctc import StreamingLSTMCTC
from pipeline.cli import main
from tests.conftest import CORPUS, write_manifest


class AtanCompress(nn.Module):
    """atan(x): a soft compression of the features; onnx2tf lowers ONNX Atan to FlexAtan, which LiteRT's builtin
    runtime lacks. (The SQRT this test used until ai-edge-quantizer builds int16x8 files TensorFlow refuses.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.atan(x)


class AtanFrontLSTM(StreamingLSTMCTC):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.norm = nn.Sequential(self.norm, AtanCompress())


def build_atan_front(hidden: int = 32, layers: int = 1) -> AtanFrontLSTM:
    return AtanFrontLSTM(hidden=hidden, layers=layers)


@pytest.fixture
def atan_manifest(tmp_path: Path, cache_dir: Path) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(build_atan_front().state_dict(), str(tmp_path / "atan.safetensors"))
    return write_manifest(
        tmp_path / "m.yaml",
        name="atan-front",
        model={"factory": "tests.targets.test_keep_going:build_atan_front", "checkpoint": str(tmp_path / "atan.safetensors")},
        backends={"onnxruntime": ["fp32"], "litert": ["fp32"]},
        verification={"corpus": str(CORPUS), "split": "verification", "max_seconds": 15},
        calibration={"corpus": str(CORPUS), "split": "calibration", "max_samples": 200},
    )


def test_an_op_without_a_kernel_fails_its_variant_and_the_others_are_reported(atan_manifest: Path, tmp_path: Path, capsys) -> None:
    code = main(["build", str(atan_manifest), "--out", str(tmp_path / "out"), "--jobs", "1"])
    err = capsys.readouterr().err
    assert code == 4, err  # a toolchain failure, not "your input is wrong" and not "verification failed"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    variants = {v["name"]: v for v in report["variants"]}
    assert list(variants) == ["onnxruntime-fp32@20ms", "litert-fp32@20ms"]
    assert variants["onnxruntime-fp32@20ms"]["passed"], report
    failed = variants["litert-fp32@20ms"]
    assert failed["status"] == "error" and not failed["passed"]
    assert failed["error"]["node"] == "tflite-fp32@20ms" and failed["error"]["kind"] == "toolchain", failed
    assert failed["error"]["tool"] == "onnx2tf" and "FlexAtan" in failed["error"]["message"], failed
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "FAILED at tflite-fp32@20ms" in markdown and "FlexAtan" in markdown
    # the artifacts that built are exported; the one that did not is absent
    assert (tmp_path / "out" / "onnxruntime-fp32@20ms").is_dir()
    assert not (tmp_path / "out" / "litert-fp32@20ms").exists()
    # the summary in the log names the variant and the stage in full
    assert "litert-fp32@20ms" in err and "tflite-fp32@20ms" in err and "onnx2tf" in err
