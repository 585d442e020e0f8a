"""`speechport`: build, graph, explain and clean targets; release, verify and stream bundles. Heavy toolchains load only inside stages."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import InternalError, ToolchainError, UserError, VerificationFailed

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV = "SPEECHPORT_CACHE"
OUTPUT_MARKER = ".speechport-output"  # `build --out` replaces only a directory holding this
BUG_LINE = "speechport: internal error (a bug in speechport, not in your input); please report it with the traceback above"
INTERRUPTED_EXIT = 130  # what a shell reports for SIGINT
_BOOKKEEPING = ("key.json", "artifact.json", "run.json")


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

    from pipeline.execute import BuildEvents

    def progress(items: Iterable[Any], description: str, total: int | None) -> Iterator[Any]:
        columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)

    from rich.markup import escape

    def failed(node_id: str, failure: Any) -> None:
        # one word as it happens; the messages follow once, after the summary
        if failure.kind == "skipped":
            console.print(f"[yellow]skip[/] {escape(node_id)} (needs {escape(str(failure.cause))})")
        else:
            console.print(f"[red]FAIL[/] {escape(node_id)} ({escape(failure.kind)} error)")

    # notes and log lines quote files and tools ("[op SQRT]"); escaped, rich would not eat them as markup
    hooks: dict[str, Any] = dict(
        started=lambda node_id: console.print(f"[bold]run [/] {escape(node_id)} ..."),
        finished=lambda node_id, hit, seconds, note: console.print(
            f"[green]hit [/] {escape(node_id)}"
            if hit
            else f"[cyan]done[/] {escape(node_id)} ({seconds:.1f} s){' - ' + escape(note) if note else ''}"
        ),
        progress=progress,
        log=lambda message: console.print(f"      {message}", style="dim", markup=False),
    )
    if "failed" in getattr(BuildEvents, "__dataclass_fields__", {}):  # executors that keep going past failures
        hooks["failed"] = failed
    return BuildEvents(**hooks)


def check_replaceable(out: Path) -> None:
    """Refuse to replace a directory speechport did not create: `--out ~/work` must not delete work."""
    if not out.exists():
        return
    hint = "pass --out a new or empty directory, or one an earlier `speechport build` wrote; or move this one away"
    if not out.is_dir():
        raise UserError("exists and is not a directory; refusing to replace it with the build output", where=str(out), hint=hint)
    if (out / OUTPUT_MARKER).is_file() or not any(out.iterdir()):
        return
    raise UserError(
        f"is not empty and was not written by speechport (no {OUTPUT_MARKER} in it); refusing to replace it",
        where=str(out),
        hint=hint,
    )


def _copy_artifact(source: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name in _BOOKKEEPING:
            continue
        if item.is_dir():
            shutil.copytree(item, destination / item.name)
        else:
            shutil.copy2(item, destination / item.name)


def export(graph, built: Mapping[str, Any], report_node: str, out: Path) -> None:
    """Copy the report and every built variant's artifact directory into `out`, replacing it atomically.

    A variant that failed to build has no artifact to copy; the report says why it is missing.
    """
    from pipeline.report.stage import variant_inputs

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        check_replaceable(out)  # again under the lock: the directory may have appeared during the build
        staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        (staging / OUTPUT_MARKER).write_text("written by `speechport build`; the next build into this directory replaces it\n")
        _copy_artifact(built[report_node].path, staging)
        for role, verify_id in variant_inputs(graph.nodes[report_node]):  # its noisy-copy runs share the artifact
            if verify_id not in built:
                continue
            artifact_id = dict(graph.nodes[verify_id].inputs)["model"]
            _copy_artifact(built[artifact_id].path, staging / role)
        if out.exists():
            previous = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(previous)
            staging.rename(out)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            staging.rename(out)


def cmd_build(args: argparse.Namespace) -> int:
    import inspect

    from rich.text import Text

    from pipeline import execute as executor  # looked up at call time: tests substitute a fake executor
    from pipeline.report.summary import print_summary

    console = _console()
    started = time.perf_counter()
    manifest, graph, cache = _load(args.manifest)
    out = Path(args.out) if args.out else REPO_ROOT / "artifacts" / manifest.name
    check_replaceable(out)  # now, not after an hour of building
    # executors before parallel builds take no `jobs`
    options = {"jobs": args.jobs} if "jobs" in inspect.signature(executor.execute).parameters else {}
    built = executor.execute(graph, cache, manifest.name, _events(console), **options)
    failures = list((getattr(built, "failures", None) or {}).values())
    report = None
    # wrong input makes every output meaningless: ship nothing, as when the manifest itself is wrong
    if "report" in built and not any(f.kind == "user" for f in failures):
        export(graph, built, "report", out)
        report = json.loads((out / "report.json").read_text())
        print_summary(console, report)
        console.print(Text(f"{out}/ ({time.perf_counter() - started:.1f} s)"))
    if failures:
        code = report_failures(failures, args.manifest)
        if code is not None:
            return code
    if report is None:
        raise InternalError(f"the build of {manifest.name} has no report node and no failure that explains why")
    if not report["passed"]:
        raise VerificationFailed(f"{manifest.name}: verification failed; see {out / 'report.md'}")
    return 0


def report_failures(failures: Iterable[Any], manifest_path: str) -> int | None:
    """Print every stage failure (build order) and return the exit code they call for, if any.

    Precedence: a bug (3) over bad input (2) over a broken toolchain (4); nodes skipped because an
    upstream failed are summed up in one line per cause.
    """
    failures = list(failures)
    skipped: dict[str, list[str]] = {}
    for failure in failures:
        if failure.kind == "skipped":
            skipped.setdefault(failure.cause or "an upstream stage", []).append(failure.node_id)
        elif failure.kind == "user":
            message = failure.message
            if not message.startswith(manifest_path):
                message = f"{manifest_path}: {message}"
            print(f"speechport: error: {message}", file=sys.stderr)
        elif failure.kind == "toolchain":
            message = failure.message if failure.node_id in failure.message else f"{failure.node_id}: {failure.message}"
            print(f"speechport: toolchain failure: {message}", file=sys.stderr)
        else:
            if failure.traceback:
                print(failure.traceback.rstrip(), file=sys.stderr)
            print(f"speechport: internal error in {failure.node_id} (stage {failure.stage}): {failure.message}", file=sys.stderr)
    for cause, nodes in skipped.items():
        print(f"speechport: skipped {len(nodes)} stage(s) that need {cause}: {', '.join(nodes)}", file=sys.stderr)
    from pipeline.execute import failure_exit_code

    code = failure_exit_code({failure.node_id: failure for failure in failures})
    if code == InternalError.exit_code:
        print(BUG_LINE, file=sys.stderr)
    return code


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

    root = cache_root()
    if not root.exists():
        print(f"nothing to remove: {root} does not exist")
        return 0
    freed = Cache(root).clean()
    print(f"removed {root} ({freed / 1e6:.1f} MB)")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from pipeline.release.commands import release

    console = _console()
    out = Path(args.out) if args.out else REPO_ROOT / "artifacts" / "release"
    return release(
        args.version, args.platform, out, REPO_ROOT, cache_root(), args.jobs, args.golden_steps, console, _events(console), report_failures
    )


def cmd_verify_bundle(args: argparse.Namespace) -> int:
    from pipeline.release.commands import verify_bundle

    return verify_bundle(Path(args.bundle), not args.no_replay, _console())


def cmd_stream(args: argparse.Namespace) -> int:
    from pipeline.release.commands import stream

    return stream(Path(args.artifact), Path(args.audio), args.variant, args.fast, args.buffer_ms, _console())


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of stages to run at once, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="speechport", description="Streaming speech models to verified on-device artifacts.")
    commands = root.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build and verify a target manifest")
    build.add_argument("manifest", help="target manifest, e.g. targets/onnx.yaml")
    build.add_argument("--out", help="output directory (default artifacts/<target name>); replaced only if speechport wrote it")
    build.add_argument(
        "--jobs", type=_jobs, default=os.cpu_count() or 1, metavar="N", help="stages to run at once (default: the CPU count)"
    )
    build.set_defaults(func=cmd_build)
    for name, func, text in (
        ("graph", cmd_graph, "list the stages of a target, each marked hit or miss"),
        ("explain", cmd_explain, "say why each stage that would run must run"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("manifest")
        sub.set_defaults(func=func)
    release = commands.add_parser("release", help="build, verify and bundle every platform (or --platform ones) under artifacts/release/")
    release.add_argument("version", help="release version, e.g. 1.2.0")
    release.add_argument("--platform", action="append", help="a platform from pipeline/release/platforms.py (repeatable; default all)")
    release.add_argument("--out", help="where the bundles go (default artifacts/release)")
    release.add_argument("--golden-steps", type=_jobs, default=300, metavar="N", help="chunks of golden test vectors per variant (default 300)")
    release.add_argument("--jobs", type=_jobs, default=os.cpu_count() or 1, metavar="N", help="stages to run at once")
    release.set_defaults(func=cmd_release)
    check = commands.add_parser("verify-bundle", help="check a bundle's sums and contracts and replay its golden vectors")
    check.add_argument("bundle", help="bundle directory or .tar.gz")
    check.add_argument("--no-replay", action="store_true", help="check sums and contracts only")
    check.set_defaults(func=cmd_verify_bundle)
    stream = commands.add_parser("stream", help="stream an audio file through an artifact in real time (the reference client)")
    stream.add_argument("artifact", help="a variant directory, or a bundle (directory or .tar.gz) with --variant")
    stream.add_argument("audio", help="WAV/FLAC file, directory or glob (streamed back to back)")
    stream.add_argument("--variant", help="which variant of a bundle, e.g. litert-int8@20ms")
    stream.add_argument("--fast", action="store_true", help="as fast as possible instead of real time (nothing is dropped)")
    stream.add_argument("--buffer-ms", type=float, default=500.0, help="ring buffer size; beyond it the oldest chunks are dropped (default 500)")
    stream.set_defaults(func=cmd_stream)
    clean = commands.add_parser("clean", help=f"delete the artifact cache (${CACHE_ENV} or artifacts/cache), if it is one")
    clean.set_defaults(func=cmd_clean)
    return root


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit 0 passed, 1 verification failed, 2 bad input, 3 a bug, 4 a toolchain broke, 130 ^C."""
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
    except ToolchainError as exc:
        print(f"speechport: toolchain failure: {exc}", file=sys.stderr)
        return ToolchainError.exit_code
    except KeyboardInterrupt:
        print("speechport: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception:  # not swallowed: whatever escaped is a bug, so show where and say so
        import traceback

        traceback.print_exc()
        print(BUG_LINE, file=sys.stderr)
        return InternalError.exit_code


if __name__ == "__main__":
    sys.exit(main())
