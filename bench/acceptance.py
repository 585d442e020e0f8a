"""Does every model ship an 8-bit-weight variant on every platform? Issue 12's acceptance, measured.

    make acceptance       # or: .venv/bin/python -m bench.acceptance [--platform android|ios|dsp ...] [--model NAME ...]

For every zoo model (targets/nightly/*.yaml) and every bring-your-own example (examples/byo/*/target.yaml), and
for each platform, one build of that model's 8-bit-weight variants with no hand list (recipes searched),
verified on the whole verification split and on its seeded noisy, reverberant copy, each variant on its own
runtime and state. A variant *ships* when, on both, its transcript's CER is within 1 point of PyTorch's (CTC
outputs) or its decisions agree with PyTorch's on at least 99.5 % of frames (decision and probability outputs),
and it passes its own bounds. The DSP's variants stream the whole split too unless `--dsp-seconds` cuts it (the HTP
simulator runs 5-120 ms a call: over a 20 s cut one CER point is 2-3 characters, too few to judge a variant by). One
line per variant, then per (model, platform) whether at least one ships.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.quant import HAND_LISTS

REPO = Path(__file__).resolve().parent.parent
PLATFORMS = {"android": ("litert", ("int8", "int16x8")), "ios": ("coreml", ("int8w", "w8a8")), "dsp": ("qnn", ("a8w8", "a16w8"))}


def models() -> dict[str, Path]:
    found = {p.stem: p for p in sorted((REPO / "targets" / "nightly").glob("*.yaml"))}
    found |= {f"byo-{p.parent.name}": p for p in sorted((REPO / "examples" / "byo").glob("*/target.yaml"))}
    return found


def manifest_for(source: Path, platform: str, dsp_seconds: float | None) -> dict:
    from pipeline.manifest import load_manifest

    document = load_manifest(source).model_dump(mode="json", exclude_unset=True)
    backend, precisions = PLATFORMS[platform]
    chunks = document.get("chunk_ms") or document.get("chunk_samples")
    key = "chunk_ms" if "chunk_ms" in document else "chunk_samples"
    changed = {k: v for k, v in document.items() if k not in ("tolerances", "litert", "coreml", "qnn", "onnxruntime")}
    changed |= {"name": f"{document['name']}-{platform}", "backends": {backend: list(precisions)}, key: chunks[:1]}
    if platform == "dsp" and dsp_seconds is not None:
        changed["verification"] = {**document["verification"], "max_seconds": dsp_seconds}
    if isinstance(document.get(backend), dict):  # keep the backend's other options (e.g. SoCs), never a hand list
        changed[backend] = {k: v for k, v in document[backend].items() if k not in HAND_LISTS}
    listed = set(precisions) | {f"{backend}.{p}" for p in precisions}
    tolerances = {k: v for k, v in document.get("tolerances", {}).items() if k in listed}
    if tolerances:
        changed["tolerances"] = tolerances
    return changed


def ships(variant: dict) -> tuple[bool, str]:
    """The acceptance: own bounds passed, and within 1 CER point (or 99.5 % of decisions) on clean and noisy."""
    if variant.get("status") == "error":
        return False, "error: " + variant["failures"][0][:100]
    figures = []
    ok = variant["passed"]
    for name, record in (("clean", variant), ("noisy", variant.get("noisy") or {})):
        if "cer_increase" in record:
            ok &= record["cer_increase"] <= 0.01
            figures.append(f"{name} CER {record['cer']:.4f} ({record['cer_increase']:+.4f})")
        elif "decision_agreement" in record:
            ok &= record["decision_agreement"] >= 0.995
            figures.append(f"{name} decisions {record['decision_agreement']:.4f}")
        else:
            ok = False
            figures.append(f"{name}: no figure")
    return ok, "; ".join(figures)


def run(name: str, source: Path, platform: str, scratch: Path, dsp_seconds: float | None) -> list[dict]:
    document = manifest_for(source, platform, dsp_seconds)
    manifest = scratch / f"{name}-{platform}.json"
    manifest.write_text(json.dumps(document, indent=1))
    out = scratch / f"{name}-{platform}"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "build", str(manifest), "--out", str(out)], capture_output=True, text=True, env=os.environ)
    seconds = time.perf_counter() - started
    report = out / "report.json"
    if not report.is_file():
        return [{"model": name, "platform": platform, "variant": "-", "ships": False, "figures": f"build failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}", "recipe": "-", "seconds": seconds}]
    rows = []
    for v in json.loads(report.read_text())["variants"]:
        ok, figures = ships(v)
        q = v.get("quantization") or {}
        recipe = ", ".join([f"state {s}" for s in q.get("keep_states", ())] + [f"frontend {f}" for f in q.get("keep_frontends", ())] + list(q.get("keep_ops", ()))) or "stock"
        failures = "" if v.get("passed") else " | " + "; ".join(v.get("failures", [])[:2])
        rows.append({"model": name, "platform": platform, "variant": v["name"], "ships": ok, "figures": figures + failures, "recipe": recipe, "seconds": seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", action="append", choices=sorted(PLATFORMS))
    parser.add_argument("--model", action="append")
    parser.add_argument("--dsp-seconds", type=float, default=None, help="Cut the DSP's streams to this much of the split (default: all of it).")
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    args = parser.parse_args()
    chosen = {k: v for k, v in models().items() if not args.model or k in args.model}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="speechport-acceptance-") as tmp:
        for name, source in chosen.items():
            for platform in args.platform or list(PLATFORMS):
                found = run(name, source, platform, Path(tmp), args.dsp_seconds)
                for row in found:
                    print(f"{row['model']:<24} {row['variant']:<22} {'SHIPS' if row['ships'] else 'no':<6} {row['recipe'][:60]:<60} {row['figures']}", flush=True)
                rows += found
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| model | android | ios | dsp |\n|---|---|---|---|")
    for name in chosen:
        cells = []
        for platform in PLATFORMS:
            mine = [r for r in rows if r["model"] == name and r["platform"] == platform]
            cells.append("-" if not mine else ", ".join(r["variant"].split("@")[0] for r in mine if r["ships"]) or "**none**")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
