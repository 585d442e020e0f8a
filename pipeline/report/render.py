"""report.md and drift.png from a report document."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.report.quantization import quantization_lines
from pipeline.verify.gates import fraction_of_range


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def status_text(variant: dict) -> str:
    if variant.get("status") == "error":
        return f"FAILED at {variant['error']['node']}"
    return "passed" if variant["passed"] else "FAILED verification"


def render_markdown(report: dict) -> str:
    verified = [v for v in report["variants"] if v.get("status") != "error"]
    lines = [
        f"# speechport report: {report['target']}",
        "",
        f"Model `{report['model']}`. {report.get('description', '')}".rstrip(),
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}**: every variant streamed the verification speech "
        "back to back, carrying its own state, on its own runtime, against the PyTorch reference.",
        "",
        "| variant | outcome | size MB | audio s | worst max abs | worst of range | min SQNR dB | one-step of range | worst state one-step | min cosine | drift ratio | CER | CER vs ref | decisions |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in report["variants"]:
        if v.get("status") == "error":
            lines.append(f"| {v['name']} | **{status_text(v)}** |" + " - |" * 12)
            continue
        outputs, states = v["outputs"].values(), v.get("states", {}).values()
        rel = max(fraction_of_range(o["max_abs"], o["reference_max_abs"]) for o in outputs)
        one_step = max(fraction_of_range(o["one_step_max_abs"], o["one_step_reference_max_abs"]) for o in outputs)
        state_rel = max((fraction_of_range(s["max_abs"], s["reference_max_abs"]) for s in states), default=None)
        lines.append(
            f"| {v['name']} | {'passed' if v['passed'] else '**FAILED verification**'} | {v['size_bytes'] / 1e6:.2f} | {v['audio_seconds']:.0f} "
            f"| {max(o['max_abs'] for o in outputs):.3g} | {rel:.3g} | {min(o['sqnr_db'] for o in outputs):.1f} | {one_step:.3g} "
            f"| {_fmt(state_rel)} | {min(o['cosine'] for o in outputs):.6f} | {max(o['drift_ratio'] for o in outputs):.2f} "
            f"| {_fmt(v.get('cer'), '.4f')} | {_fmt(v.get('cer_vs_reference'), '.4f')} | {_fmt(v.get('decision_agreement'), '.4f')} |"
        )
    lines += noisy_lines(report, verified)
    if verified:
        lines += speed_lines([v for v in verified if v.get("device_latency", True)], [v for v in verified if not v.get("device_latency", True)])
    lines += decision_lines(verified)
    lines += backend_figure_lines(verified)
    lines += quantization_lines(verified)
    failures = [(v["name"], f) for v in report["variants"] for f in v["failures"]]
    if failures:
        lines += ["", "## Failures", ""] + [f"- `{name}`: {failure}" for name, failure in failures]
    waived = [(v["name"], bound, reason) for v in verified for bound, reason in v.get("waived", {}).items()]
    if waived:
        lines += ["", "## Bounds removed by the target", ""] + [f"- `{name}`: `{bound}` not applied: {reason}" for name, bound, reason in waived]
    routes = sorted({(str(v.get("chunk", v["chunk_ms"])), json.dumps(v["export"], sort_keys=True)) for v in verified if v.get("export")})
    if routes:
        lines += ["", "## How the model was captured", ""]
        for chunk, text in routes:
            route = json.loads(text)
            line = f"- {chunk} chunks: `{route['route']}`"
            if route.get("reason"):
                line += f" (torch.export failed: {route['reason']})"
            if route.get("adapters"):
                line += "; adapters, each checked against the original: " + "; ".join(route["adapters"])
            lines.append(line)
    if report.get("reference_cer") is not None:
        lines += ["", f"PyTorch reference CER against the ground truth: {report['reference_cer']:.4f}."]
    lines += [
        "",
        "Worst of range: the largest error of an output divided by its largest |reference value|. One-step: the same "
        "artifact called on the reference's state (teacher-forced), in windows at the start, middle and end of the "
        "stream, so the error cannot accumulate; the gap to the closed-loop error is drift through the state. State "
        "outputs are judged there. Drift ratio: RMS error over the last third of the stream divided by that over the "
        "first third (above 1: error accumulates through the state). Error per window over time: `drift.png`.",
        "",
    ]
    return "\n".join(lines)


def noisy_outcome(noisy: dict) -> str:
    if noisy.get("status") == "error":
        return f"**FAILED at {noisy['error']['node']}**"
    return "passed" if noisy["passed"] else "**FAILED**"


def noisy_lines(report: dict, verified: list[dict]) -> list[str]:
    """Each verified variant's run on the noisy, reverberant copy: the same artifact, another condition."""
    rows = [v for v in verified if "noisy" in v]
    if not rows:
        return []
    lines = [
        "",
        "## On the noisy, reverberant copy",
        "",
        "| variant | outcome | CER | CER vs PyTorch | decisions | worst SQNR dB | worst state SQNR dB |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in rows:
        n = v["noisy"]
        if n.get("status") == "error":
            lines.append(f"| {v['name']} | {noisy_outcome(n)} |" + " - |" * 5)
            continue
        sqnr = min((o["sqnr_db"] for o in n["outputs"].values() if "sqnr_db" in o), default=None)
        state_sqnr = min((s["sqnr_db"] for s in n.get("states", {}).values() if "sqnr_db" in s), default=None)
        lines.append(
            f"| {v['name']} | {noisy_outcome(n)} | {_fmt(n.get('cer'), '.4f')} | {_fmt(n.get('cer_vs_reference'), '.4f')} "
            f"| {_fmt(n.get('decision_agreement'), '.4f')} | {_fmt(sqnr, '.1f')} | {_fmt(state_sqnr, '.1f')} |"
        )
    lines += [
        "",
        "The same artifacts streamed a seeded copy of the verification speech in a simulated room (RT60 0.2-0.7 s) and "
        "in white, pink or babble noise at 20, 10 or 5 dB SNR (`pipeline/audio/augment.py`), against PyTorch streaming "
        "the same copy, and held to the same bounds; a variant passes only if it passes on both (the noisy run's "
        "failures are listed as \"noisy copy: ...\"). State SQNR: one call from the reference's state.",
    ]
    if report.get("reference_noisy_cer") is not None:
        lines += ["", f"PyTorch reference CER against the ground truth on the noisy copy: {report['reference_noisy_cer']:.4f}."]
    return lines


def speed_lines(device: list[dict], simulated: list[dict]) -> list[str]:
    """Device-meaningful timings, and apart from them those of simulators and interpreters, to which no budget applies."""
    lines = [
        "",
        "## Speed",
        "",
        "| variant | runtime | RTF | p50 ms | p99 ms | device-meaningful |",
        "|---|---|---|---|---|---|",
    ]
    rows = [(v, "yes") for v in device] + [(v, "no: not a device's timing, no budget applies") for v in simulated]
    for k, (v, meaningful) in enumerate(rows):
        if k == len(device) and device:  # the simulated rows sit below a divider of their own
            lines.append("| *simulators and interpreters, not a device's timing* | | | | | |")
        lines.append(
            f"| {v['name']} | {v.get('runtime', '-')} | {v['rtf']:.4f} | {v['latency_ms_p50']:.3f} | {v['latency_ms_p99']:.3f} | {meaningful} |"
        )
    lines += ["", "Timings are wall clock on the machine that ran verification, one thread."]
    if simulated:
        lines[-1] += (
            " The runtimes marked not device-meaningful run the artifact in simulation or interpretation on this "
            "machine: their milliseconds per call say how long verification takes, nothing about a device."
        )
    return lines


def _flat(value: object, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _flat(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return [item for k, v in enumerate(value) for item in _flat(v, f"{prefix}[{k}]")]
    return [(prefix, value)]


def backend_figure_lines(verified: list[dict]) -> list[str]:
    """Each variant's `backend_figures` (what its backend measures besides the shared metrics), flattened."""
    with_figures = [v for v in verified if v.get("backend_figures")]
    if not with_figures:
        return []
    lines = ["", "## Backend figures", ""]
    for v in with_figures:
        lines += [f"`{v['name']}`:", ""]
        for key, value in _flat(v["backend_figures"]):
            shown = format(value, ".4g") if isinstance(value, float) else str(value)
            lines.append(f"- {key}: {shown}")
        lines.append("")
    return lines[:-1]


def decision_lines(verified: list[dict]) -> list[str]:
    """Per decision or probability output of each variant: its rule and how often its decisions agree."""
    rows = [(v["name"], name, o) for v in verified for name, o in v["outputs"].items() if "decision_agreement" in o]
    if not rows:
        return []
    lines = [
        "",
        "## Decisions",
        "",
        "| variant | output | decision | frames | agreement | binary agreement | accuracy | reference accuracy | positive rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, name, o in rows:
        lines.append(
            f"| {variant} | {name} | {o.get('decision_rule', '-')} | {o.get('decision_frames', '-')} | {o['decision_agreement']:.4f} "
            f"| {_fmt(o.get('binary_decision_agreement'), '.4f')} | {_fmt(o.get('decision_accuracy'), '.4f')} "
            f"| {_fmt(o.get('reference_decision_accuracy'), '.4f')} | {_fmt(o.get('positive_rate'), '.3f')} |"
        )
    lines += [
        "",
        "Agreement: the fraction of frames whose decision equals PyTorch's (the variant's `decisions` column is its "
        "least agreeing output). Binary agreement: the same for positive against negative, where the output declares "
        "positive classes. Accuracy: the positive decision against the corpus's speech/non-speech label of the frame.",
    ]
    return lines


def plot_drift(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    verified = [v for v in report["variants"] if v.get("status") != "error"]
    names = sorted({name for v in verified for name in v["drift"]})
    fig, axes = plt.subplots(max(1, len(names)), 1, figsize=(9, 3.2 * max(1, len(names))), squeeze=False)
    for axis, name in zip(axes[:, 0], names):
        for v in verified:
            windows = v["drift"].get(name)
            if not windows:
                continue
            seconds = [w["end_step"] * v["chunk_ms"] / 1000 for w in windows]
            axis.semilogy(seconds, [max(w["max_abs"], 1e-12) for w in windows], label=v["name"], marker=".")
        axis.set_title(f"{name}: max abs error vs PyTorch per {verified[0]['window_seconds']:g} s window")
        axis.set_xlabel("seconds of streamed speech")
        axis.set_ylabel("max abs error")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    if not names:
        axes[0, 0].text(0.5, 0.5, "no variant was verified", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    # fixed metadata: the same report draws the same bytes
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
