"""Cold build vs warm no-op build of the default target, measured in one run.

    make bench            # or: .venv/bin/python -m bench.build_cache [MANIFEST ...]

The cold build runs against an empty private cache; the warm build repeats it with nothing
changed. Each build is a fresh `speechport build` process, as a user would run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed_build(manifest: Path, cache: Path, out: Path) -> float:
    env = {**os.environ, "SPEECHPORT_CACHE": str(cache)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "build", str(manifest), "--out", str(out)],
                            env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"build of {manifest} failed:\n{result.stderr}")
    return elapsed


def main() -> None:
    manifests = [Path(a) for a in sys.argv[1:]] or [REPO / "targets" / "onnx.yaml", REPO / "targets" / "android.yaml"]
    for manifest in manifests:
        bench(manifest)


def bench(manifest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="speechport-bench-") as scratch:
        cache, out = Path(scratch) / "cache", Path(scratch) / "out"
        cold = timed_build(manifest, cache, out)
        warm = [timed_build(manifest, cache, out) for _ in range(3)]
    best = min(warm)
    print(f"\n{manifest.name}\n{'build':<22}{'seconds':>10}")
    print(f"{'cold (empty cache)':<22}{cold:>10.2f}")
    for k, seconds in enumerate(warm, 1):
        print(f"{f'warm no-op #{k}':<22}{seconds:>10.2f}")
    print(f"{'cold / warm ratio':<22}{cold / best:>10.1f}")
    print(f"warm no-op under 2 s: {'yes' if best < 2.0 else 'NO'} ({manifest.relative_to(REPO) if manifest.is_relative_to(REPO) else manifest})")


if __name__ == "__main__":
    main()
