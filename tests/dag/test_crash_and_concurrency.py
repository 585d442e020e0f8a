"""A killed build leaves nothing a rebuild trusts; two builds at once agree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import write_manifest

SPEECHPORT = [sys.executable, "-m", "pipeline.cli"]


def _env(cache_dir: Path) -> dict[str, str]:
    return {**os.environ, "SPEECHPORT_CACHE": str(cache_dir)}


def test_sigkill_mid_stage_leaves_nothing_trusted(tmp_path: Path, tiny_manifest: dict, cache_dir: Path) -> None:
    tiny_manifest["verification"]["max_seconds"] = 120  # long enough a reference stage to kill it inside
    path = write_manifest(tmp_path / "m.yaml", **tiny_manifest)
    process = subprocess.Popen([*SPEECHPORT, "build", str(path), "--out", str(tmp_path / "out")], env=_env(cache_dir),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    staging_root = cache_dir / "objects" / "reference"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(staging_root.glob(".tmp-*")):
        assert process.poll() is None, "build ended before the reference stage started"
        time.sleep(0.01)
    assert list(staging_root.glob(".tmp-*")), "reference stage never started"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # the killed stage published nothing; what it left is only a private temporary directory
    published = [p for p in staging_root.iterdir() if not p.name.startswith(".")]
    assert published == []
    assert not (tmp_path / "out").exists()

    rebuilt = subprocess.run([*SPEECHPORT, "build", str(path), "--out", str(tmp_path / "out")], env=_env(cache_dir),
                             capture_output=True, text=True)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert list(staging_root.glob(".tmp-*")) == []
    # the reference of the clean speech and that of its noisy copy
    assert len([p for p in staging_root.iterdir() if not p.name.startswith(".")]) == 2
    assert (tmp_path / "out" / "report.json").is_file()


def test_two_builds_at_once_both_succeed_identically(tmp_path: Path, tiny_manifest: dict, cache_dir: Path) -> None:
    path = write_manifest(tmp_path / "m.yaml", **tiny_manifest)
    processes = [
        subprocess.Popen([*SPEECHPORT, "build", str(path), "--out", str(tmp_path / f"out{k}")], env=_env(cache_dir),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(2)
    ]
    results = [p.communicate(timeout=600) for p in processes]
    for process, (_, stderr) in zip(processes, results):
        assert process.returncode == 0, stderr
    variant = "onnxruntime-fp32@20ms"
    for name in (f"{variant}/model.onnx", f"{variant}/contract.json"):
        assert (tmp_path / "out0" / name).read_bytes() == (tmp_path / "out1" / name).read_bytes()
    # each key was built once: one published directory per node (reference and verify also run on the noisy copy)
    from collections import Counter

    from pipeline.manifest import load_manifest
    from pipeline.plan import plan

    nodes = Counter(node.stage.name for node in plan(load_manifest(path)).nodes.values())
    for stage_dir in (cache_dir / "objects").iterdir():
        assert len([p for p in stage_dir.iterdir() if not p.name.startswith(".")]) == nodes[stage_dir.name], stage_dir
