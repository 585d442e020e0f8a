"""The table `speechport build` prints after a build: one row per variant of report.json.

On a terminal it is a rich table; in a log (CI) it is plain markdown, so every variant name arrives
whole and nothing is read as markup. Each variant that failed gets its reasons below the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


SUMMARY_COLUMNS = ("variant", "status", "MB", "max abs", "cosine", "CER", "CER vs ref", "decisions", "noisy copy", "RTF")


def _number(value: Any, spec: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return format(value, spec)


def variant_status(variant: dict) -> str:
    """'passed', 'FAILED verification', or 'FAILED at <stage>' for a variant that never got verified."""
    error = variant.get("error")
    if variant.get("status") == "error" or isinstance(error, dict):
        stage = (error.get("stage") or error.get("node")) if isinstance(error, dict) else None
        return f"FAILED at {stage or 'an unknown stage'}"
    status = variant.get("status") or ("passed" if variant.get("passed") else "failed")
    return "passed" if status == "passed" and variant.get("passed", True) else "FAILED verification"


def decisions_cell(variant: dict) -> str:
    """The least agreement of the variant's decision outputs; which output, when it has several; the binary figure."""
    cell = _number(variant.get("decision_agreement"), ".4f")
    if cell == "-":
        return cell
    deciding = [n for n, o in (variant.get("outputs") or {}).items() if isinstance(o, dict) and "decision_agreement" in o]
    if len(deciding) > 1 and variant.get("decision_output"):
        cell += f" ({variant['decision_output']})"
    binary = _number(variant.get("binary_decision_agreement"), ".4f")
    return cell if binary == "-" else f"{cell}, binary {binary}"


def noisy_cell(variant: dict) -> str:
    """The variant's run on the noisy copy: its outcome and its headline figure (CER, else decisions, else worst SQNR)."""
    noisy = variant.get("noisy")
    if not isinstance(noisy, dict):
        return "-"
    error = noisy.get("error")
    if noisy.get("status") == "error" or isinstance(error, dict):
        stage = (error.get("stage") or error.get("node")) if isinstance(error, dict) else None
        return f"FAILED at {stage or 'an unknown stage'}"
    outcome = "passed" if noisy.get("passed") else "FAILED"
    sqnr = [o["sqnr_db"] for o in (noisy.get("outputs") or {}).values() if isinstance(o, dict) and _number(o.get("sqnr_db"), "g") != "-"]
    for label, value, spec in (
        ("CER", noisy.get("cer"), ".4f"),
        ("decisions", noisy.get("decision_agreement"), ".4f"),
        ("SQNR", min(sqnr) if sqnr else None, ".1f"),
    ):
        if _number(value, spec) != "-":
            return f"{outcome}, {label} {_number(value, spec)}"
    return outcome


def summary_row(variant: dict) -> list[str]:
    """One variant's cells in SUMMARY_COLUMNS order; '-' for every metric it does not have."""
    outputs = [o for o in (variant.get("outputs") or {}).values() if isinstance(o, dict)]
    max_abs = [o["max_abs"] for o in outputs if _number(o.get("max_abs"), "g") != "-"]
    cosine = [o["cosine"] for o in outputs if _number(o.get("cosine"), "g") != "-"]
    size = variant.get("size_bytes")
    return [
        str(variant.get("name", "?")),
        variant_status(variant),
        _number(size / 1e6 if _number(size, "g") != "-" else None, ".2f"),
        _number(max(max_abs) if max_abs else None, ".3g"),
        _number(min(cosine) if cosine else None, ".6f"),
        _number(variant.get("cer"), ".4f"),
        _number(variant.get("cer_vs_reference"), ".4f"),
        decisions_cell(variant),
        noisy_cell(variant),
        _number(variant.get("rtf"), ".4f"),
    ]


def _failure_lines(variant: dict) -> list[str]:
    lines = [str(f) for f in variant.get("failures") or []]
    error = variant.get("error")
    # the report usually words the error as a failure already; say it once
    if isinstance(error, dict) and error.get("message") and not any(str(error["message"]) in line for line in lines):
        kind = error.get("cause_kind") if error.get("kind") == "skipped" else error.get("kind")
        lines.append(f"{kind + ' ' if kind else ''}error in {error.get('node') or error.get('stage') or '?'}: {error['message']}")
    return lines


def print_summary(console: Console, report: dict) -> None:
    """The report as a table: rich on a terminal, plain markdown (whole names, no markup) in a log."""
    variants = report.get("variants") or []
    title = f"{report.get('target', '?')}: {'passed' if report.get('passed') else 'FAILED'}"
    rows = [summary_row(v) for v in variants]
    if not console.is_terminal:
        # CI logs: `out` neither wraps, crops nor interprets markup, so every name arrives whole
        console.out(title, highlight=False)
        console.out("", highlight=False)
        for cells in (list(SUMMARY_COLUMNS), ["---"] * len(SUMMARY_COLUMNS), *rows):
            console.out("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |", highlight=False)
        for v in variants:
            for line in _failure_lines(v):
                console.out(f"FAIL {v.get('name', '?')}: {line}", highlight=False)
        return

    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title))
    table.add_column("variant", no_wrap=True, overflow="fold")
    for column in SUMMARY_COLUMNS[1:]:
        table.add_column(column, overflow="fold")
    for cells in rows:
        status = Text(cells[1], style="" if cells[1] == "passed" else "red")
        table.add_row(Text(cells[0]), status, *(Text(c) for c in cells[2:]))
    console.print(table)
    for v in variants:
        for line in _failure_lines(v):
            console.print(Text.assemble(("FAIL", "red"), f" {v.get('name', '?')}: {line}"))
