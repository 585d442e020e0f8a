"""The report's quantization section: per quantized variant its recipe, what it keeps at higher precision and at
what cost, the held-out figures before (stock recipe) and after, and `sensitivity.png`, the per-tensor figures."""

from __future__ import annotations

import math
from pathlib import Path


def _headline(condition: dict) -> str:
    parts = []
    if "cer_vs_reference" in condition:
        parts.append(f"CER vs PyTorch {condition['cer_vs_reference']:.4f}")
    if "cer_increase" in condition:
        parts.append(f"CER {condition['cer_increase']:+.4f}")
    if "decision_agreement" in condition:
        parts.append(f"decisions {condition['decision_agreement']:.4f}")
    if not parts and condition.get("sqnr_db"):
        parts.append(f"SQNR {min(condition['sqnr_db'].values()):.1f} dB")
    return ", ".join(parts) or "-"


def quantization_lines(verified: list[dict]) -> list[str]:
    quantized = [v for v in verified if v.get("quantization")]
    if not quantized:
        return []
    lines = [
        "",
        "## Quantization recipes",
        "",
        "Each quantized variant's recipe: searched (the stock recipe streamed over held-out calibration speech on the "
        "variant's own runtime, then the most sensitive units kept at higher precision until its bounds held), pinned "
        "by the target's hand lists, or stock. Before/after: the held-out figures of the stock recipe and of the one "
        "chosen. Size and latency cost: the chosen recipe against the stock one; latency is the median call of each, "
        "streamed by the search over the same held-out speech on the runtime named (* a simulator, interpreter or "
        "proxy, whose ratio says less of a device's). Per-tensor sensitivity: `sensitivity.png`.",
        "",
        "| variant | recipe | kept at higher precision | as | calibration | held-out before | held-out after | size cost | latency cost | evaluations |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in quantized:
        q = v["quantization"]
        search = q.get("search", {})
        units = [f"state `{s}`" for s in q["keep_states"]] + [f"front end `{f}`" for f in q.get("keep_frontends", [])]
        units += [f"`{o}`" for o in q["keep_ops"]] + [f"{o} (no 16x8 kernel)" for o in q.get("no_int16_kernel", [])]
        kept = ", ".join(units) or "nothing"
        if q.get("tensorflow_refused"):  # why a file that keeps nothing came from ai-edge-quantizer
            kept += f"; ai-edge-quantizer: TensorFlow cannot quantize {', '.join(q['tensorflow_refused'])} to 16x8"
        before = "; ".join(f"{name}: {_headline(c)}" for name, c in search.get("before", {}).items()) or "-"
        after = "; ".join(f"{name}: {_headline(c)}" for name, c in search.get("after", {}).items()) or "-"
        cost = search.get("cost", {})
        size = f"{cost['size_bytes'] / 1e3:+.1f} kB" if "size_bytes" in cost else "-"
        met = "" if not search or search.get("met") else " (bounds NOT met on held-out speech)"
        lines.append(
            f"| {v['name']} | {q['source']}{met} | {kept} | {q.get('kept_at', '-')} | {q['calibration']} | {before} | {after} | {size} "
            f"| {_latency(q.get('latency'), v.get('device_latency', False))} | {search.get('evaluations_run', '-')} |"
        )
    return lines


def _latency(latency: dict | None, device_latency: bool) -> str:
    """The chosen recipe's median call against the stock one's, as a ratio, with both figures and the runtime."""
    if not latency or not latency.get("stock_call_ms_p50") or latency.get("chosen_call_ms_p50") is None:
        return "-"
    stock, chosen = latency["stock_call_ms_p50"], latency["chosen_call_ms_p50"]
    mark = "" if device_latency else "*"
    return f"x{chosen / stock:.2f} ({chosen:.3f} vs {stock:.3f} ms, {latency['runtime']}{mark})"


def plot_sensitivity(report: dict, path: Path, top: int = 20) -> None:
    """Per searched variant, the tensors its own grid damages most (SQNR alone at the target bit width)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    searched = [v for v in report["variants"] if v.get("status") != "error" and v.get("quantization", {}).get("sensitivity")]
    fig, axes = plt.subplots(max(1, len(searched)), 1, figsize=(9, 0.25 * top + 1.5 if searched else 2) if len(searched) <= 1 else (9, (0.25 * top + 1.5) * len(searched)), squeeze=False)
    for axis, v in zip(axes[:, 0], searched):
        q = v["quantization"]
        rows = q["sensitivity"][:top][::-1]
        kept = set(q["keep_ops"]) | set(q.get("covered", ()))
        values = [r["sqnr_alone_db"] if math.isfinite(r["sqnr_alone_db"]) else 100.0 for r in rows]
        colors = ["tab:orange" if r["node"] in kept else "tab:blue" for r in rows]
        axis.barh([f"{r['node']} ({r['op']})" for r in rows], values, color=colors)
        axis.set_title(f"{v['name']}: SQNR each tensor keeps on its own grid (orange: kept at higher precision)", fontsize=9)
        axis.set_xlabel("dB")
        axis.tick_params(axis="y", labelsize=7)
        axis.grid(True, axis="x", alpha=0.3)
    if not searched:
        axes[0, 0].text(0.5, 0.5, "no variant's recipe was searched", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
