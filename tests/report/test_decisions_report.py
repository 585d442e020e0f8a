"""report.md and the build summary show each decision output's agreement, and which output a variant's figure is."""

from __future__ import annotations

from pipeline.report.render import render_markdown
from pipeline.report.summary import decisions_cell, summary_row


def variant(**extra) -> dict:
    outputs = {
        "speech_prob": {
            "max_abs": 1e-6, "reference_max_abs": 0.99, "sqnr_db": 120.0, "cosine": 1.0, "drift_ratio": 1.0,
            "one_step_max_abs": 1e-6, "one_step_reference_max_abs": 0.99, "decision_rule": "p >= 0.5",
            "decision_frames": 1250, "decision_agreement": 0.9992, "threshold": 0.5, "decision_accuracy": 0.71,
            "reference_decision_accuracy": 0.72, "positive_rate": 0.4,
        },
        "events": {
            "max_abs": 1e-6, "reference_max_abs": 3.0, "sqnr_db": 120.0, "cosine": 1.0, "drift_ratio": 1.0,
            "one_step_max_abs": 1e-6, "one_step_reference_max_abs": 3.0, "decision_rule": "arg-max; positive: classes [1, 2]",
            "decision_frames": 1250, "decision_agreement": 0.9984, "binary_decision_agreement": 0.9996,
        },
    }
    return {
        "name": "litert-fp32@512smp", "passed": True, "status": "passed", "failures": [], "size_bytes": 70_000,
        "audio_seconds": 20.0, "outputs": outputs, "states": {}, "rtf": 0.001, "latency_ms_p50": 0.1, "latency_ms_p99": 0.2,
        "decision_agreement": 0.9984, "decision_output": "events", "binary_decision_agreement": 0.9996, **extra,
    }


def test_the_summary_names_the_least_agreeing_output_and_the_binary_figure() -> None:
    v = variant()
    assert decisions_cell(v) == "0.9984 (events), binary 0.9996"
    assert summary_row(v)[7] == "0.9984 (events), binary 0.9996"
    single = variant()
    del single["outputs"]["events"], single["binary_decision_agreement"]
    single |= {"decision_agreement": 0.9992, "decision_output": "speech_prob"}
    assert decisions_cell(single) == "0.9992"
    assert decisions_cell({"name": "x"}) == "-"


def test_report_md_lists_every_decision_output_of_every_variant() -> None:
    report = {"target": "vad", "model": "m:build", "passed": True, "variants": [variant()]}
    markdown = render_markdown(report)
    assert "## Decisions" in markdown
    assert "| litert-fp32@512smp | speech_prob | p >= 0.5 | 1250 | 0.9992 | - | 0.7100 | 0.7200 | 0.400 |" in markdown
    assert "| litert-fp32@512smp | events | arg-max; positive: classes [1, 2] | 1250 | 0.9984 | 0.9996 | - | - | - |" in markdown
    assert "| 0.9984 |" in markdown.split("## Speed")[0]  # the variant's decisions column
