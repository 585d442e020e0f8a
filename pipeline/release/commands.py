"""The release commands behind the CLI: `release`, `verify-bundle` and `stream`."""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.contract import CONTRACT_FILE
from pipeline.errors import InternalError, UserError, VerificationFailed

VERSION = re.compile(r"^\d+\.\d+\.\d+([.-][0-9A-Za-z.-]+)?$")


def release(
    version: str, platforms: list[str] | None, out: Path, repo: Path, cache: Path, jobs: int, golden_steps: int, console, events,
    report_failures: Callable[[list, str], int | None],
) -> int:
    """Build (from the cache) and bundle each platform; `report_failures` is the CLI's, so stage failures read alike."""
    from pipeline import execute as executor
    from pipeline.cache import Cache
    from pipeline.manifest import load_manifest
    from pipeline.plan import plan
    from pipeline.release.bundle import write_bundle
    from pipeline.release.platforms import PLATFORMS, platform

    if not VERSION.match(version):
        raise UserError(f"release version must look like 1.2.3 (optionally 1.2.3-rc1), got {version!r}", where="VERSION")
    chosen = [platform(name) for name in platforms] if platforms else list(PLATFORMS)
    for p in chosen:
        started = time.perf_counter()
        manifest_path = repo / p.target
        manifest = load_manifest(manifest_path)
        graph = plan(manifest)
        built = executor.execute(graph, Cache(cache), manifest.name, events, jobs=jobs)
        failures = list((getattr(built, "failures", None) or {}).values())
        if failures:
            code = report_failures(failures, str(manifest_path))
            return code if code is not None else InternalError.exit_code
        bundle = write_bundle(
            version=version, platform=p.name, manifest_path=manifest_path, graph=graph, built=built, out_root=out, repo=repo,
            golden_steps=golden_steps,
        )
        size = sum(f.stat().st_size for f in bundle.directory.rglob("*") if f.is_file())
        console.print(
            f"[green]released[/] {p.name}: {bundle.directory}/ ({size / 1e6:.1f} MB, {len(bundle.variants)} variants), "
            f"{bundle.archive.name} ({bundle.archive.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s"
        )
    return 0


def verify_bundle(path: Path, replay: bool, console) -> int:
    from rich.markup import escape

    from pipeline.release.check import check_bundle

    result = check_bundle(path, replay=replay, log=lambda message: console.print(f"  {escape(message)}", soft_wrap=True))
    if not result.passed:
        for problem in result.problems:
            console.print(f"[red]FAIL[/] {escape(problem)}", soft_wrap=True)
        raise VerificationFailed(f"{path}: bundle check failed: {result.problems[0]}")
    console.print(f"[green]pass[/] {escape(str(path))}: {len(result.variants)} variants, sums, contracts" + (", golden replay" if replay else ""))
    return 0


def pick_variant(root: Path, variant: str | None) -> Path:
    """A variant directory: `root` itself when it holds a contract, else the named (or only) variant inside it."""
    if (root / CONTRACT_FILE).is_file():
        return root
    choices = sorted(p.parent.name for p in root.glob(f"*/{CONTRACT_FILE}"))
    if not choices:
        raise UserError(f"holds no {CONTRACT_FILE}, and no variant directory holding one", where=str(root))
    if variant is None:
        if len(choices) == 1:
            return root / choices[0]
        raise UserError(f"holds {len(choices)} variants; pick one with --variant", where=str(root), hint=f"one of {', '.join(choices)}")
    if variant not in choices:
        import difflib

        close = difflib.get_close_matches(variant, choices, n=1)
        raise UserError(f"has no variant {variant!r}" + (f"; did you mean {close[0]!r}?" if close else ""), where=str(root), hint=f"one of {', '.join(choices)}")
    return root / variant


def load_stream_audio(path: Path, sample_rate: int):
    import numpy as np

    from pipeline.audio.user_audio import load_audio, scan_audio

    if sample_rate != 16_000:
        raise UserError(f"the artifact streams {sample_rate} Hz audio; speechport reads audio at 16000 Hz only", where=str(path))
    utterances = load_audio(scan_audio(path, None))
    return np.concatenate([u.audio for u in utterances]).astype(np.float32)


def stream(target: Path, audio_path: Path, variant: str | None, fast: bool, buffer_ms: float, console) -> int:
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn

    from pipeline.backends import get_backend
    from pipeline.contract import read_contract
    from pipeline.release.streaming import stream_audio

    with tempfile.TemporaryDirectory(prefix="speechport-stream-") as tmp:
        root = target
        if target.is_file():
            from pipeline.release.archive import safe_extract

            root = safe_extract(target, Path(tmp))
        elif not target.is_dir():
            raise UserError("no such artifact directory, bundle or bundle archive", where=str(target))
        variant_dir = pick_variant(root, variant)
        contract = read_contract(variant_dir)
        audio = load_stream_audio(audio_path, contract.stream.frontend.sample_rate)
        from pipeline.release.golden import runtime_backend

        backend = runtime_backend(variant_dir)
        session = get_backend(backend).open_session(variant_dir)
        rate = contract.stream.frontend.sample_rate
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"))
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(f"{variant_dir.name} {'fast' if fast else 'real time'}", total=len(audio) // contract.stream.chunk_samples, status="")

            def on_chunk(result: Any, decoder: Any, total: int) -> None:
                if result.chunks % 10:
                    return
                heard = decoder.transcript[-40:] if decoder.ctc is not None else ""
                status = f"{result.chunks * contract.stream.chunk_samples / rate:6.1f} s  dropped {result.dropped_chunks}  {escape(heard)}"
                bar.update(task, completed=result.chunks + result.dropped_chunks, status=status)

            result = stream_audio(session, audio, fast=fast, buffer_ms=buffer_ms, on_chunk=on_chunk)
    if result.transcript is not None:
        print(result.transcript)
    for name, segments in result.decisions.items():
        for label, start, end in segments:
            print(f"{name}\t{start:.2f}\t{end:.2f}\t{label}")
    console.print(
        f"{variant_dir.name}: {result.audio_seconds:.1f} s of audio, {result.chunks} chunks, compute RTF {result.rtf:.4f} "
        f"on {get_backend(backend).runtime_label or backend}, slowest chunk {result.slowest_chunk_ms:.1f} ms, max buffered {result.max_buffered_ms:.0f} ms, "
        f"dropped {result.dropped_chunks} chunks",
        soft_wrap=True,
    )
    if result.dropped_chunks:
        console.print(
            f"[red]underrun[/]: processing fell behind real time; {result.dropped_chunks} chunks "
            f"({result.dropped_chunks * contract.stream.chunk_ms / 1000:.2f} s of audio) were dropped"
        )
        print(f"speechport: {result.dropped_chunks} chunks dropped: the loop is slower than real time here", file=sys.stderr)
        return VerificationFailed.exit_code
    return 0
