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


class SqrtCompress(nn.Module):
    """sign(x) sqrt(1 + x^2): a magnitude as a VAD front end computes one; LiteRT has no int16x8 kernel for its SQRT."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x * x + 1.0) * torch.sign(x)


class SqrtFrontLSTM(StreamingLSTMCTC):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.norm = nn.Sequential(self.norm, SqrtCompress())


def build_sqrt_front(hidden: int = 32, layers: int = 1) -> SqrtFrontLSTM:
    return SqrtFrontLSTM(hidden=hidden, layers=layers)


@pytest.fixture
def sqrt_manifest(tmp_path: Path, cache_dir: Path) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(build_sqrt_front().state_dict(), str(tmp_path / "sqrt.safetensors"))
    return write_manifest(
        tmp_path / "m.yaml",
        name="sqrt-front",
        model={"factory": "tests.targets.test_keep_going:build_sqrt_front", "checkpoint": str(tmp_path / "sqrt.safetensors")},
        backends={"onnxruntime": ["fp32"], "litert": ["fp32", "int16x8"]},
        verification={"corpus": str(CORPUS), "split": "verification", "max_seconds": 15},
        calibration={"corpus": str(CORPUS), "split": "calibration", "max_samples": 200},
    )


def test_an_op_without_a_kernel_fails_its_variant_and_the_others_are_reported(sqrt_manifest: Path, tmp_path: Path, capsys) -> None:
    code = main(["build", str(sqrt_manifest), "--out", str(tmp_path / "out"), "--jobs", "1"])
    err = capsys.readouterr().err
    assert code == 4, err  # a toolchain failure, not "your input is wrong" and not "verification failed"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    variants = {v["name"]: v for v in report["variants"]}
    assert list(variants) == ["onnxruntime-fp32@20ms", "litert-fp32@20ms", "litert-int16x8@20ms"]
    assert variants["onnxruntime-fp32@20ms"]["passed"] and variants["litert-fp32@20ms"]["passed"], report
    failed = variants["litert-int16x8@20ms"]
    assert failed["status"] == "error" and not failed["passed"]
    assert failed["error"]["node"] == "tflite-int16x8@20ms" and failed["error"]["kind"] == "toolchain", failed
    assert failed["error"]["tool"] == "tensorflow" and "SQRT" in failed["error"]["message"], failed
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "FAILED at tflite-int16x8@20ms" in markdown and "SQRT" in markdown
    # the artifacts that built are exported; the one that did not is absent
    assert (tmp_path / "out" / "litert-fp32@20ms" / "model.tflite").is_file()
    assert not (tmp_path / "out" / "litert-int16x8@20ms").exists()
    # the summary in the log names the variant and the stage in full
    assert "litert-int16x8@20ms" in err and "tflite-int16x8@20ms" in err and "tensorflow" in err
