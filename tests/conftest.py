"""Shared fixtures: a tiny streaming model and a manifest for it, with a private cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "models" / "corpus"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("SPEECHPORT_CACHE", str(path))
    return path


def tiny_checkpoint(path: Path, hidden: int = 32, layers: int = 1, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file

    from models.lstm_ctc import build

    torch.manual_seed(seed)
    save_file(build(hidden=hidden, layers=layers).state_dict(), str(path))
    return path


def write_manifest(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump(overrides, sort_keys=False))
    return path


@pytest.fixture
def tiny_manifest(tmp_path: Path, cache_dir: Path) -> dict:
    """A valid manifest (as a dict) for a 1 x 32 LSTM, verified on 20 s of the verification split."""
    checkpoint = tiny_checkpoint(tmp_path / "tiny.safetensors")
    return {
        "name": "tiny",
        "model": {"factory": "models.lstm_ctc:build", "kwargs": {"hidden": 32, "layers": 1}, "checkpoint": str(checkpoint)},
        "chunk_ms": [20],
        "backends": {"onnxruntime": ["fp32"]},
        "verification": {"corpus": str(CORPUS), "split": "verification", "max_seconds": 20},
    }
