"""The one table of what is released: each platform's target manifest, and each backend's client generator.

A bundle holds a target's verified variants; everything backend-specific in it comes through the
backend interface (`get_backend(...).open_session` records and replays the golden vectors) and
the client generator named here. Adding a platform is one row in PLATFORMS and, for a backend
with no generator yet, one entry in CLIENTS (e.g. the DSP: `Platform("dsp", "targets/dsp.yaml",
...)` and `"qnn": "pipeline.release.clients.cpp:generate_qnn"`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.contract import Contract


@dataclass(frozen=True)
class Platform:
    name: str
    target: str  # manifest path, relative to the repository
    description: str


PLATFORMS: tuple[Platform, ...] = (
    Platform("android", "targets/android.yaml", "LiteRT (.tflite) for Android, Kotlin client"),
    Platform("ios", "targets/ios.yaml", "Core ML (.mlpackage) for iOS, Swift client (explicit state and stateful)"),
    Platform("onnx", "targets/onnx.yaml", "ONNX for onnxruntime (desktop, server), C++ client on the C API"),
    Platform("dsp", "targets/dsp.yaml", "QNN for the Hexagon DSP: DLC, EP-context models with context binaries, C++ client on onnxruntime + QNN EP"),
)

# backend -> "module:function(contract, out_dir) -> list of written files"
CLIENTS: dict[str, str] = {
    "litert": "pipeline.release.clients.kotlin:generate",
    "coreml": "pipeline.release.clients.swift:generate",
    "onnxruntime": "pipeline.release.clients.cpp:generate",
    "qnn": "pipeline.release.clients.cpp:generate",  # the same loop, run with --ep QNN backend_path=libQnnHtp.so
}

# What differs between two releases of the same tree built from empty caches (measured: two cold
# `speechport release 1.0.0` runs of android, ios and onnx), and why. Every other file was byte-identical.
VARYING_FILES: tuple[tuple[str, str], ...] = (
    ("report/report.json", "holds the build machine's wall-clock figures of verification (rtf, latency_ms_p50, latency_ms_p99)"),
    ("report/report.md", "renders those timings"),
    ("provenance.json", "stage keys chain on input digests: onnx2tf's SavedModel (an intermediate, not shipped) differs "
     "run to run, so the keys after it differ, and the report's digest holds its timings"),
    ("SHA256SUMS", "lists the digests of the files above"),
)
# Core ML packages were listed here (random item UUIDs, protobuf map order) until the coreml stage normalized them
# (`make_reproducible`, tested in tests/backends/test_coreml.py).
VARYING_BY_BACKEND: dict[str, tuple[tuple[str, str], ...]] = {
    # measured by `make bench` on targets/dsp.yaml: two builds from empty caches wrote byte-identical QDQ models
    # (model.onnx) but different compiled files; what QNN's writers vary was not investigated
    "qnn": (
        ("*/model.dlc", "QNN's IR backend writes a different DLC from the same QDQ model on every build"),
        ("*/htp/*/model_ctx_qnn.bin", "QNN's HTP backend writes a different context binary from the same QDQ model on every build"),
        ("*/htp/*/model_ctx.onnx", "embeds the context binary's name and metadata of that build"),
        ("*/qnn.json", "lists the digests of the compiled files"),
        ("*/contract.json", "records the digests of the compiled files"),
    ),
}


def varying_files(backends: list[str]) -> list[dict[str, str]]:
    """The files of a bundle with these backends that a rebuild from empty caches changes, with the reason."""
    entries = list(VARYING_FILES) + [entry for b in sorted(set(backends)) for entry in VARYING_BY_BACKEND.get(b, ())]
    return [{"files": pattern, "why": why} for pattern, why in entries]


def platform(name: str) -> Platform:
    import difflib

    from pipeline.errors import UserError

    for p in PLATFORMS:
        if p.name == name:
            return p
    names = [p.name for p in PLATFORMS]
    close = difflib.get_close_matches(name, names, n=1)
    raise UserError(f"unknown platform {name!r}" + (f"; did you mean {close[0]!r}?" if close else "") + f" (known: {', '.join(names)})")


def client_generator(backend: str) -> Callable[[Contract, Path], list[Path]] | None:
    """The backend's client generator, or None when the release ships no client for it (the contract still says how)."""
    entry = CLIENTS.get(backend)
    if entry is None:
        return None
    module, function = entry.split(":")
    return getattr(importlib.import_module(module), function)
