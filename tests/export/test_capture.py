"""The front door: torch.export first, TorchScript only as a recorded fallback, errors that name the user's op and line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.cli import main
from tests.conftest import CORPUS, write_manifest


class ReadsShapeAsNumber(nn.Module):
    """Counts active units as a Python int: no graph captures that, and a trace bakes in one value."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(80, 16)
        self.out = nn.Linear(16, 28)

    def forward(self, feats, h, c):
        h, c = self.cell(feats[:, 0], (h, c))
        active = int(torch.nonzero(h > 0).shape[0])
        return (self.out(h) * active).unsqueeze(1).repeat(1, 2, 1), h, c


class ThroughNumpy(nn.Module):
    """Scales by a factor computed in numpy from a parameter: torch.export cannot follow it, a trace folds it."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(80, 16)
        self.out = nn.Linear(16, 28)

    def forward(self, feats, h, c):
        h, c = self.cell(feats[:, 0], (h, c))
        scale = torch.from_numpy(np.abs(self.out.weight.detach().numpy()).mean(keepdims=True))
        return (self.out(h) * scale).unsqueeze(1).repeat(1, 2, 1), h, c


def build_reads_shape() -> nn.Module:
    return ReadsShapeAsNumber()


def build_through_numpy() -> nn.Module:
    return ThroughNumpy()


def _manifest(tmp_path: Path, factory: str, builder) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(builder().state_dict(), str(tmp_path / "w.safetensors"))
    return write_manifest(
        tmp_path / "m.yaml",
        name="capture",
        model={"factory": f"tests.export.test_capture:{factory}", "checkpoint": str(tmp_path / "w.safetensors")},
        io={
            "chunk_ms": 20,
            "frontend": {"kind": "logmel"},
            "inputs": [{"name": "feats", "shape": [1, 2, 80], "time_axis": 1}],
            "states": [{"input": "h_in", "output": "h_out", "shape": [1, 16]}, {"input": "c_in", "output": "c_out", "shape": [1, 16]}],
            "outputs": [{"name": "logits", "shape": [1, 2, 28], "time_axis": 1, "kind": "tensor"}],
        },
        backends={"onnxruntime": ["fp32"]},
        verification={"corpus": str(CORPUS), "split": "verification", "max_seconds": 5},
    )


def test_a_model_no_route_captures_fails_naming_op_and_line_in_a_few_lines(tmp_path: Path, cache_dir: Path, capsys) -> None:
    path = _manifest(tmp_path, "build_reads_shape", build_reads_shape)
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--jobs", "1"]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "aten::nonzero" in err and "test_capture.py:" in err and "in forward" in err, err
    assert "torch.export failed" in err and "TorchScript fallback" in err
    log = err.split("Full exporter output: ")[1].split()[0].rstrip(".")
    assert Path(log).is_file() and "Traceback" in Path(log).read_text()
    assert "Traceback" not in err
    assert len((captured.out + err).strip().splitlines()) <= 20, err


def test_the_fallback_route_is_recorded_with_its_reason(tmp_path: Path, cache_dir: Path) -> None:
    path = _manifest(tmp_path, "build_through_numpy", build_through_numpy)
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--jobs", "1"]) == 0
    contract = json.loads((tmp_path / "out" / "onnxruntime-fp32@20ms" / "contract.json").read_text())
    assert contract["export"]["route"] == "torch.jit.trace" and contract["export"]["reason"], contract["export"]
    assert contract["export"]["adapters"] == ["cell: LSTMCell -> explicit gates (ExplicitLSTMCell)"]
    assert "`torch.jit.trace` (torch.export failed:" in (tmp_path / "out" / "report.md").read_text()
