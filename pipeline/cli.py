"""`speechport`: build, graph, explain and clean targets. Heavy toolchains load only inside stages."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import InternalError, UserError, VerificationFailed

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV = "SPEECHPORT_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or REPO_ROOT / "artifacts" / "cache")


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _load(manifest_path: str):
    from pipeline.cache import Cache
    from pipeline.manifest import load_manifest
    from pipeline.plan import plan

    manifest = load_manifest(manifest_path)
    return manifest, plan(manifest), Cache(cache_root())


def _events(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.dag import BuildEvents

    def progress(items: Iterable[Any], description: str, total: int | None) -> Iterator[Any]:
        columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)

    return BuildEvents(
        started=lambda node_id: console.print(f"[bold]run [/] {node_id} ..."),
        finished=lambda node_id, hit, seconds, note: console.print(
            f"[green]hit [/] {node_id}" if hit else f"[cyan]done[/] {node_id} ({seconds:.1f} s){' - ' + note if note else ''}"
        ),
        progress=progress,
        log=lambda message: console.print(f"      {message}", style="dim"),
    )


def export(graph, built: dict, report_node: str, out: Path) -> None:
    """Copy the report and every variant's artifact directory into `out`, replacing it atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name in ("report.json", "report.md", "drift.png"):
            shutil.copy2(built[report_node].path / name, staging / name)
        for role, verify_id in graph.nodes[report_node].inputs:
            artifact_id = dict(graph.nodes[verify_id].inputs)["model"]
            destination = staging / role
            destination.mkdir()
            for item in built[artifact_id].path.iterdir():
                if item.name not in ("key.json", "artifact.json", "run.json"):
                    shutil.copy2(item, destination / item.name)
        if out.exists():
            previous = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(previous)
            staging.rename(out)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            staging.rename(out)


def cmd_build(args: argparse.Namespace) -> int:
    from pipeline.dag import execute

    console = _console()
    started = time.perf_counter()
    manifest, graph, cache = _load(args.manifest)
    built = execute(graph, cache, manifest.name, _events(console))
    out = Path(args.out) if args.out else REPO_ROOT / "artifacts" / manifest.name
    export(graph, built, "report", out)
    report = json.loads((out / "report.json").read_text())
    print_summary(console, report)
    console.print(f"{out}/ ({time.perf_counter() - started:.1f} s)")
    if not report["passed"]:
        raise VerificationFailed(f"{manifest.name}: verification failed; see {out / 'report.md'}")
    return 0


def print_summary(console, report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{report['target']}: {'passed' if report['passed'] else 'FAILED'}")
    for column in ("variant", "ok", "MB", "max abs", "cosine", "CER", "CER vs ref", "decisions", "RTF"):
        table.add_column(column)
    for v in report["variants"]:
        outputs = v["outputs"].values()
        table.add_row(
            v["name"],
            "yes" if v["passed"] else "[red]NO[/]",
            f"{v['size_bytes'] / 1e6:.2f}",
            f"{max(o['max_abs'] for o in outputs):.3g}",
            f"{min(o['cosine'] for o in outputs):.6f}",
            f"{v['cer']:.4f}" if "cer" in v else "-",
            f"{v['cer_vs_reference']:.4f}" if "cer_vs_reference" in v else "-",
            f"{v['decision_agreement']:.4f}" if "decision_agreement" in v else "-",
            f"{v['rtf']:.4f}",
        )
    console.print(table)
    for v in report["variants"]:
        for failure in v["failures"]:
            console.print(f"[red]FAIL[/] {v['name']}: {failure}")


def cmd_graph(args: argparse.Namespace) -> int:
    from pipeline.dag import explain

    manifest, graph, cache = _load(args.manifest)
    for status in explain(graph, cache, manifest.name):
        node = graph.nodes[status.node_id]
        upstream = ", ".join(node.upstream) or "-"
        print(f"{'hit ' if status.hit else 'miss'}  {status.node_id:<34} <- {upstream}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from pipeline.dag import explain

    manifest, graph, cache = _load(args.manifest)
    statuses = explain(graph, cache, manifest.name)
    for status in statuses:
        if status.hit:
            print(f"hit   {status.node_id}")
        else:
            print(f"miss  {status.node_id}")
            for reason in status.reasons:
                print(f"        {reason}")
    misses = sum(not s.hit for s in statuses)
    print(f"{misses} of {len(statuses)} stages would run")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from pipeline.cache import Cache

    freed = Cache(cache_root()).clean()
    print(f"removed {cache_root()} ({freed / 1e6:.1f} MB)")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="speechport", description="Streaming speech models to verified on-device artifacts.")
    commands = root.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build and verify a target manifest")
    build.add_argument("manifest", help="target manifest, e.g. targets/onnx.yaml")
    build.add_argument("--out", help="output directory (default artifacts/<target name>)")
    build.set_defaults(func=cmd_build)
    for name, func, text in (
        ("graph", cmd_graph, "list the stages of a target, each marked hit or miss"),
        ("explain", cmd_explain, "say why each stage that would run must run"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("manifest")
        sub.set_defaults(func=func)
    clean = commands.add_parser("clean", help=f"delete the artifact cache (${CACHE_ENV} or artifacts/cache)")
    clean.set_defaults(func=cmd_clean)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        message = str(exc)
        manifest = getattr(args, "manifest", None)
        if manifest and not message.startswith(manifest):
            message = f"{manifest}: {message}"  # errors found while building still name the manifest
        print(f"speechport: error: {message}", file=sys.stderr)
        return UserError.exit_code
    except VerificationFailed as exc:
        print(f"speechport: {exc}", file=sys.stderr)
        return VerificationFailed.exit_code
    except InternalError:
        import traceback

        traceback.print_exc()
        print("speechport: internal error (a bug in speechport, not in your input)", file=sys.stderr)
        return InternalError.exit_code


if __name__ == "__main__":
    sys.exit(main())
