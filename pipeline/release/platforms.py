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
)

# backend -> "module:function(contract, out_dir) -> list of written files"
CLIENTS: dict[str, str] = {
    "litert": "pipeline.release.clients.kotlin:generate",
    "coreml": "pipeline.release.clients.swift:generate",
    "onnxruntime": "pipeline.release.clients.cpp:generate",
}


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
