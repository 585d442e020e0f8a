"""report: gather every variant's verification into report.json (schema 1), report.md and drift.png."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from pipeline.cache import Artifact
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.stages.verify import RESULT_FILE

REPORT_JSON, REPORT_MD, DRIFT_PNG = "report.json", "report.md", "drift.png"


class ReportConfig(StageConfig):
    target: str = Field(description="Target name.")
    model: str = Field(description="Model factory.")
    description: str = Field("", description="Target description shown at the top of report.md.")


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def render_markdown(report: dict) -> str:
    lines = [
        f"# speechport report: {report['target']}",
        "",
        f"Model `{report['model']}`. {report.get('description', '')}".rstrip(),
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}**: every variant streamed the verification speech "
        "back to back, carrying its own state, on its own runtime, against the PyTorch reference.",
        "",
        "| variant | ok | size MB | audio s | worst max abs | one-step max abs | min cosine | drift ratio | CER | CER vs ref | decisions | RTF | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in report["variants"]:
        outputs = v["outputs"].values()
        lines.append(
            f"| {v['name']} | {'yes' if v['passed'] else '**no**'} | {v['size_bytes'] / 1e6:.2f} | {v['audio_seconds']:.0f} "
            f"| {max(o['max_abs'] for o in outputs):.3g} | {max(o['one_step_max_abs'] for o in outputs):.3g} "
            f"| {min(o['cosine'] for o in outputs):.6f} "
            f"| {max(o['drift_ratio'] for o in outputs):.2f} | {_fmt(v.get('cer'), '.4f')} | {_fmt(v.get('cer_vs_reference'), '.4f')} "
            f"| {_fmt(v.get('decision_agreement'), '.4f')} | {v['rtf']:.4f} | {v['latency_ms_p50']:.3f} | {v['latency_ms_p99']:.3f} |"
        )
    failures = [(v["name"], f) for v in report["variants"] for f in v["failures"]]
    if failures:
        lines += ["", "## Failures", ""] + [f"- `{name}`: {failure}" for name, failure in failures]
    if report.get("reference_cer") is not None:
        lines += ["", f"PyTorch reference CER against the ground truth: {report['reference_cer']:.4f}."]
    lines += [
        "",
        "One-step max abs: the same artifact fed the reference's state on each of the first chunks, so the error "
        "cannot accumulate; the gap to the closed-loop max abs is drift through the state. "
        "Drift ratio: RMS error over the last third of the stream divided by that over the first third "
        "(above 1: error accumulates through the state). Error per window over time: `drift.png`.",
        "",
    ]
    return "\n".join(lines)


def plot_drift(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for v in report["variants"] for name in v["drift"]})
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 3.2 * len(names)), squeeze=False)
    for axis, name in zip(axes[:, 0], names):
        for v in report["variants"]:
            windows = v["drift"].get(name)
            if not windows:
                continue
            seconds = [w["end_step"] * v["chunk_ms"] / 1000 for w in windows]
            axis.semilogy(seconds, [max(w["max_abs"], 1e-12) for w in windows], label=v["name"], marker=".")
        axis.set_title(f"{name}: max abs error vs PyTorch per {report['variants'][0]['window_seconds']:g} s window")
        axis.set_xlabel("seconds of streamed speech")
        axis.set_ylabel("max abs error")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


class ReportStage(Stage):
    name = "report"
    version = "2"
    tools = ("matplotlib",)
    Config = ReportConfig

    @classmethod
    def run(cls, config: ReportConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        variants = []
        for role in inputs:  # plan order: chunk length, then backend, then precision as the manifest lists them
            record = json.loads((inputs[role].path / RESULT_FILE).read_text())
            record["artifact"] = f"{record['name']}/{record.pop('artifact_file')}"
            variants.append(record)
        report = {
            "schema": 1,
            "target": config.target,
            "model": config.model,
            "description": config.description,
            "passed": all(v["passed"] for v in variants),
            "reference_cer": next((v["reference_cer"] for v in variants if "reference_cer" in v), None),
            "variants": variants,
        }
        (out / REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n")
        (out / REPORT_MD).write_text(render_markdown(report))
        plot_drift(report, out / DRIFT_PNG)
