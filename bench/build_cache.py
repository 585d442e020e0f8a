"""Cold vs warm (no-op) builds of the default targets, and --jobs 2 against --jobs 1, measured in one run.

    make bench            # or: .venv/bin/python -m bench.build_cache [MANIFEST ...]

Each build is a fresh `speechport build` process, as a user would run it. Per target: a cold
build with `--jobs 2` and one with `--jobs 1`, each against its own empty cache; three warm
no-op builds on the first cache; the ratios; and whether the two cold builds exported the same
bytes (every file but the report, whose timings are wall clock).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WALL_CLOCK_FILES = {"report.json", "report.md", "drift.png"}  # they carry each run's timings


def timed_build(manifest: Path, cache: Path, out: Path, jobs: int) -> float:
    env = {**os.environ, "SPEECHPORT_CACHE": str(cache)}
    command = [sys.executable, "-m", "pipeline.cli", "build", str(manifest), "--out", str(out), "--jobs", str(jobs)]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"build of {manifest} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return elapsed


def exported_digests(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in WALL_CLOCK_FILES and not p.name.startswith(".")
    }


def bench(manifest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="speechport-bench-") as scratch:
        root = Path(scratch)
        parallel = timed_build(manifest, root / "cache-2", root / "out-2", jobs=2)
        sequential = timed_build(manifest, root / "cache-1", root / "out-1", jobs=1)
        warm = [timed_build(manifest, root / "cache-2", root / "out-2", jobs=2) for _ in range(3)]
        a, b = exported_digests(root / "out-2"), exported_digests(root / "out-1")
        differing = sorted(name for name in set(a) | set(b) if a.get(name) != b.get(name))
    best = min(warm)
    label = manifest.relative_to(REPO) if manifest.is_relative_to(REPO) else manifest
    print(f"\n{label}\n{'build':<28}{'seconds':>10}")
    print(f"{'cold, --jobs 2':<28}{parallel:>10.2f}")
    print(f"{'cold, --jobs 1':<28}{sequential:>10.2f}")
    for k, seconds in enumerate(warm, 1):
        print(f"{f'warm no-op #{k}':<28}{seconds:>10.2f}")
    print(f"{'--jobs 1 / --jobs 2 (cold)':<28}{sequential / parallel:>10.2f}")
    print(f"{'cold / warm (--jobs 2)':<28}{parallel / best:>10.1f}")
    print(f"warm no-op within 1 s: {'yes' if best <= 1.0 else 'NO'}")
    print(f"--jobs 2 and --jobs 1 exported the same bytes: {'yes' if not differing else 'NO: ' + ', '.join(differing)} ({len(a)} files)")


def main() -> None:
    manifests = [Path(a).resolve() for a in sys.argv[1:]] or [REPO / "targets" / name for name in ("onnx.yaml", "android.yaml", "ios.yaml", "dsp.yaml")]
    for manifest in manifests:
        bench(manifest)


if __name__ == "__main__":
    main()
