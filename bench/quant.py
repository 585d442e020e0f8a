"""The stock quantization recipe against speechport's, for the same model and speech, measured in one run.

    make bench            # after bench.build_cache; or: .venv/bin/python -m bench.quant [MANIFEST ...]

Per target, two builds of its quantized variants in fresh `speechport build` processes sharing
the build cache: as the target stands (recipes searched, or pinned by its hand lists), and
stock (plain full-integer quantization calibrated on the same recorded trajectories: the search
off, every hand list removed). Both are verified the same way, each variant streamed on its own
runtime and state over the whole verification split (and its noisy copy, where the target has
one). The table: recipe, CER against the truth and against PyTorch, decision agreement, size and
latency per call. A stock variant failing its bounds is the point of the comparison, not an error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# every backend option that pins a recipe (a hand list): the searched builds drop them
HAND_LISTS = (
    "keep_float", "keep_float_states", "keep_float_frontends",  # LiteRT (keep_float_states: Core ML's too)
    "keep_fp16_ops", "keep_float_weights",  # Core ML
    "sixteen_bit", "sixteen_bit_states", "sixteen_bit_frontends", "sixteen_bit_weights",  # QNN
)  # fmt: skip


def quantized_only(document: dict) -> dict:
    """The manifest reduced to its quantized variants (the ones a recipe applies to)."""
    from pipeline.backends import get_backend

    backends = {}
    for name, precisions in document["backends"].items():
        backend = get_backend(name)
        searched = getattr(backend.load_quantizer(), "kept_at", {})
        kept = [p for p in precisions if backend.precision(p).calibrated or p in searched]
        if kept:
            backends[name] = kept
    listed = {p for ps in backends.values() for p in ps} | {f"{b}.{p}" for b, ps in backends.items() for p in ps}
    tolerances = {k: v for k, v in document.get("tolerances", {}).items() if k in listed}
    return {**document, "backends": backends, "tolerances": tolerances}


def stock(document: dict) -> dict:
    changed = {**document, "name": f"{document['name']}-stock", "quantization": {**document.get("quantization", {}), "search": False}}
    for backend in document["backends"]:
        if isinstance(document.get(backend), dict):
            changed[backend] = {k: v for k, v in document[backend].items() if k not in HAND_LISTS}
    return changed


def build(document: dict, scratch: Path, label: str) -> tuple[dict, float]:
    manifest = scratch / f"{label}.json"  # JSON is YAML
    manifest.write_text(json.dumps(document, indent=1))
    command = [sys.executable, "-m", "pipeline.cli", "build", str(manifest), "--out", str(scratch / label)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    elapsed = time.perf_counter() - started
    report = scratch / label / "report.json"
    if result.returncode not in (0, 1) or not report.is_file():  # 1: a variant failed its bounds, which stock may
        sys.exit(f"build of {label} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(report.read_text()), elapsed


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def rows(report: dict, kind: str) -> list[str]:
    lines = []
    for v in report["variants"]:
        if v.get("status") == "error":
            lines.append(f"| {v['name']} | {kind} | error: {v['failures'][0][:80]} |" + " - |" * 9)
            continue
        q = v.get("quantization") or {}
        kept = ", ".join([f"state {s}" for s in q.get("keep_states", ())] + list(q.get("keep_ops", ()))) or "nothing"
        noisy = v.get("noisy") or {}
        lines.append(
            f"| {v['name']} | {kind} ({q.get('source', '-')}) | {kept} | {_fmt(v.get('cer'))} | {_fmt(v.get('cer_vs_reference'))} "
            f"| {_fmt(v.get('decision_agreement'))} | {_fmt(noisy.get('cer'))} | {_fmt(noisy.get('cer_vs_reference'))} "
            f"| {v['size_bytes'] / 1e6:.3f} | {_fmt(v.get('latency_ms_p50'), '.2f')} | {'passed' if v['passed'] else 'FAILED'} |"
        )
    return lines


def bench(path: Path) -> None:
    from pipeline.manifest import load_manifest

    document = quantized_only(load_manifest(path).model_dump(mode="json", exclude_unset=True))
    with tempfile.TemporaryDirectory(prefix="speechport-bench-quant-") as tmp:
        scratch = Path(tmp)
        ours, ours_seconds = build(document, scratch, "speechport")
        theirs, theirs_seconds = build(stock(document), scratch, "stock")
    label = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    print(f"\n{label}: stock recipe vs speechport's (verification split; build {theirs_seconds:.0f} s stock, {ours_seconds:.0f} s speechport)\n")
    print("| variant | recipe | kept | CER | CER vs PyTorch | decisions | noisy CER | noisy CER vs PyTorch | MB | p50 ms | bounds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for line in rows(theirs, "stock") + rows(ours, "speechport"):
        print(line)
    if ours.get("reference_cer") is not None:
        print(f"\nPyTorch reference CER: {ours['reference_cer']:.4f}")


def main() -> None:
    manifests = [Path(a).resolve() for a in sys.argv[1:]] or [REPO / "targets" / name for name in ("android.yaml", "ios.yaml", "dsp.yaml")]
    for manifest in manifests:
        bench(manifest)


if __name__ == "__main__":
    main()
