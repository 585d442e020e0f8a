"""report: every variant of a target in report.json (schema 3), report.md and drift.png.

A variant verified on the noisy, reverberant copy too (input role `noisy:<variant>`) carries that
run under `noisy` (`NOISY_FIGURES`: cer, cer_increase, cer_vs_reference, reference_cer, decision figures,
`outputs.<name>` max_abs/sqnr_db/cosine and decision_agreement, `states.<name>` max_abs/sqnr_db,
steps, audio_seconds, passed, status, failures, and `error` where it failed at a stage); the
variant passes only if both runs pass, the noisy run's failures listed among its own prefixed
"noisy copy: ". A variant that never got verified on the clean speech is reported once, for the
stage that failed, with no `noisy`. The report carries `reference_noisy_cer` beside `reference_cer`.
A variant whose recipe was searched (input role `search:<variant>`) carries the recipe's latency cost
under `quantization.latency` (`latency_cost`).

Schema 3 (over 2): each variant names its `chunk` as the manifest lists it ('20ms', '512smp') and,
once verified, carries `chunk_samples`, `chunk_ms` (a float, derived) and `sample_rate`; decision
and probability outputs carry their decision figures under `outputs.<name>` (decision_rule,
decision_frames, decision_agreement, binary_decision_agreement where positive classes are
declared, threshold for a probability, decision_accuracy and positive_rate against the corpus's
speech labels and the reference's), and the variant carries those of the output agreeing least
(`decision_agreement`, `decision_output`, `binary_decision_agreement`, `decision_accuracy`).

Every planned variant is listed, whatever became of it: passed; failed verification (which bound,
by how much); or failed at a stage (which stage, tool, op, message), when its artifact never got
built. Budgets are judged here, not in verify: size from the verify record, speed from its
`timings.json` (wall clock, outside the cached bytes), and only where the backend's latency
means something on a device.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from pipeline.cache import Artifact
from pipeline.dag import Node, Stage, StageConfig, StageContext, StageFailure
from pipeline.manifest import Budgets
from pipeline.report.quantization import plot_sensitivity
from pipeline.report.render import plot_drift, render_markdown
from pipeline.spec import ChunkLength, Strict

REPORT_JSON, REPORT_MD, DRIFT_PNG, SENSITIVITY_PNG = "report.json", "report.md", "drift.png", "sensitivity.png"
RESULT_FILE, TIMINGS_FILE = "variant.json", "timings.json"  # what each verify writes
NOISY_PREFIX = "noisy:"  # report input role of a variant's run on the noisy copy
SEARCH_PREFIX = "search:"  # report input role of a variant's recipe search, whose timings give the recipe's latency cost
NOISY_FAILURE = "noisy copy: "  # how the variant lists that run's failures
NOISY_FIGURES = (
    "cer", "cer_increase", "cer_vs_reference", "reference_cer", "decision_agreement", "decision_output", "binary_decision_agreement",
    "decision_accuracy", "steps", "audio_seconds", "transcript",
)
NOISY_OUTPUT_FIGURES = ("max_abs", "sqnr_db", "cosine", "decision_agreement", "binary_decision_agreement")


def noisy_role(variant: str) -> str:
    """The report input role of `variant`'s verification on the noisy copy."""
    return f"{NOISY_PREFIX}{variant}"


def search_role(variant: str) -> str:
    """The report input role of `variant`'s recipe search."""
    return f"{SEARCH_PREFIX}{variant}"


def variant_inputs(report: Node) -> list[tuple[str, str]]:
    """(variant name, verify node id) of each variant the report lists: its runs on the noisy copy and its recipe
    search are no variants."""
    return [(role, dep) for role, dep in report.inputs if not role.startswith((NOISY_PREFIX, SEARCH_PREFIX))]


def latency_cost(role: str, inputs: dict[str, Artifact]) -> dict | None:
    """What a searched recipe costs in latency: the stock and the chosen candidate's median call, timed by the search
    over the same held-out speech on one runtime (wall clock, like the verify timings the report renders)."""
    if role not in inputs:  # not searched, or the search failed (the variant reports that failure)
        return None
    return json.loads((inputs[role].path / TIMINGS_FILE).read_text()).get("latency")


class VariantInfo(Strict):
    name: str = Field(description="Variant name, also the report input's role.")
    backend: str = Field(description="Registered backend.")
    precision: str = Field(description="Precision in the backend's vocabulary.")
    chunk: ChunkLength = Field(description="Chunk length, in the unit the manifest lists it.")
    runtime: str = Field(description="What executed the artifact during verification.")
    device_latency: bool = Field(description="Whether the measured latency means anything on a device.")


class ReportConfig(StageConfig):
    target: str = Field(description="Target name.")
    model: str = Field(description="Model factory.")
    description: str = Field("", description="Target description shown at the top of report.md.")
    budgets: Budgets = Field(description="Size and speed limits per artifact.")
    variants: tuple[VariantInfo, ...] = Field(description="Every planned variant, in plan order.")
    noisy: bool = Field(False, description="Whether each variant was also verified on the noisy copy (input role noisy:<variant>).")


def error_entry(failure: StageFailure) -> tuple[dict, str]:
    """What the report says of a skipped or failed verify: the stage that failed upstream of it, and the failure line."""
    details = dict(failure.details)
    root = failure.cause or failure.node_id
    kind = details.pop("cause_kind", failure.kind)
    stage = details.pop("cause_stage", failure.stage)
    return {"node": root, "stage": stage, "kind": kind, "message": failure.message} | details, f"failed at {root}: {failure.message}"


def noisy_entry(role: str, inputs: dict[str, Artifact], ctx: StageContext) -> dict:
    """The figures of a variant's run on the noisy copy, or where that run failed."""
    if role not in inputs:
        error, line = error_entry(ctx.failures[role])
        return {"passed": False, "status": "error", "error": error, "failures": [line]}
    result = json.loads((inputs[role].path / RESULT_FILE).read_text())
    entry = {k: result[k] for k in NOISY_FIGURES if k in result}
    entry["outputs"] = {name: {k: o[k] for k in NOISY_OUTPUT_FIGURES if k in o} for name, o in result["outputs"].items()}
    entry["states"] = {name: {k: s[k] for k in ("max_abs", "sqnr_db") if k in s} for name, s in result["states"].items()}
    entry |= {"passed": result["passed"], "status": "passed" if result["passed"] else "failed", "failures": result["failures"]}
    return entry


def budget_failures(record: dict, timings: dict, budgets: Budgets, device_latency: bool) -> list[str]:
    failures = []
    if record["size_bytes"] > budgets.max_size_mb * 1e6:
        failures.append(f"size: {record['size_bytes'] / 1e6:.2f} MB exceeds the budget of {budgets.max_size_mb:g} MB")
    if device_latency and not timings["rtf"] <= budgets.max_rtf:
        failures.append(f"speed: real-time factor {timings['rtf']:.3f} exceeds the budget of {budgets.max_rtf:g}")
    return failures


class ReportStage(Stage):
    name = "report"
    # 9: cer_increase on the noisy copy; 10: the recipe table names kept front ends and ops left float for want of a 16x8
    # kernel; 11: the recipe table gives each searched recipe's latency cost (input role search:<variant>)
    version = "11"
    tools = ("matplotlib",)
    Config = ReportConfig

    @classmethod
    def run(cls, config: ReportConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        variants = []
        for info in config.variants:
            if info.name in inputs:
                record = json.loads((inputs[info.name].path / RESULT_FILE).read_text())
                timings = json.loads((inputs[info.name].path / TIMINGS_FILE).read_text())
                record["artifact"] = f"{record['name']}/{record.pop('artifact_file')}"
                record |= timings
                record["failures"] = record["failures"] + budget_failures(record, timings, config.budgets, info.device_latency)
                latency = latency_cost(search_role(info.name), inputs)
                if latency is not None and record.get("quantization"):
                    record["quantization"]["latency"] = latency
                if config.noisy:
                    record["noisy"] = noisy_entry(noisy_role(info.name), inputs, ctx)
                    record["failures"] += [NOISY_FAILURE + f for f in record["noisy"]["failures"]]
                record["passed"] = not record["failures"]
                record["status"] = "passed" if record["passed"] else "failed"
            else:
                # the verify node was skipped: what the report names is the stage that failed upstream of it,
                # once, whatever became of the run on the noisy copy (it shares that upstream, or has nothing to add)
                error, line = error_entry(ctx.failures[info.name])
                record = {
                    "name": info.name,
                    "backend": info.backend,
                    "precision": info.precision,
                    info.chunk.field: info.chunk.value,
                    "passed": False,
                    "status": "error",
                    "error": error,
                    "failures": [line],
                }
            record["chunk"], record["runtime"], record["device_latency"] = info.chunk.label, info.runtime, info.device_latency
            variants.append(record)
        report = {
            "schema": 3,
            "target": config.target,
            "model": config.model,
            "description": config.description,
            "passed": all(v["passed"] for v in variants),
            "reference_cer": next((v["reference_cer"] for v in variants if "reference_cer" in v), None),
            "reference_noisy_cer": next((v["noisy"]["reference_cer"] for v in variants if "reference_cer" in v.get("noisy", {})), None),
            "budgets": config.budgets.model_dump(),
            "variants": variants,
        }
        (out / REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n")
        (out / REPORT_MD).write_text(render_markdown(report))
        plot_drift(report, out / DRIFT_PNG)
        plot_sensitivity(report, out / SENSITIVITY_PNG)
