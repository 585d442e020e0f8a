"""Streaming sessions, one module per backend, imported only when used."""

from __future__ import annotations

import importlib
from pathlib import Path

from pipeline.runtimes.base import StreamingSession

_SESSIONS = {
    "torch": "pipeline.runtimes.torch_rt:TorchSession",
    "onnxruntime": "pipeline.runtimes.onnxruntime_rt:OnnxRuntimeSession",
    "litert": "pipeline.runtimes.litert:LiteRtSession",
}


def open_session(backend: str, artifact_dir: Path, threads: int = 1) -> StreamingSession:
    if backend not in _SESSIONS:
        raise KeyError(f"no runtime for backend {backend!r}; known: {sorted(_SESSIONS)}")
    module_name, class_name = _SESSIONS[backend].split(":")
    session_class = getattr(importlib.import_module(module_name), class_name)
    return session_class(artifact_dir, threads=threads)
