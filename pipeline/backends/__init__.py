"""The backend registry: one line per backend, a lazy import string to the object its package exposes.

Adding a backend is one package under `pipeline/backends/`, one line here and its test module
(`tests/backends/test_<name>.py`, which a test requires). Manifest, plan, verify and report
know backends only through `get_backend`.
"""

from __future__ import annotations

import difflib
import importlib
from functools import lru_cache
from typing import TYPE_CHECKING

from pipeline.errors import InternalError

if TYPE_CHECKING:
    from pipeline.backends.base import Backend

REGISTRY: dict[str, str] = {
    "onnxruntime": "pipeline.backends.onnxruntime:BACKEND",
    "litert": "pipeline.backends.litert:BACKEND",
    "coreml": "pipeline.backends.coreml:BACKEND",
    "qnn": "pipeline.backends.qnn:BACKEND",
}


def known_backends() -> list[str]:
    return list(REGISTRY)


def unknown_backend_message(name: str) -> str:
    close = difflib.get_close_matches(name, REGISTRY, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown backend {name!r}{hint} (known: {', '.join(REGISTRY)})"


@lru_cache(maxsize=None)
def get_backend(name: str) -> "Backend":
    """The registered backend object; importing it loads no toolchain (they load inside stages and sessions)."""
    from pipeline.backends.base import Backend

    if name not in REGISTRY:
        raise KeyError(unknown_backend_message(name))
    module_name, attribute = REGISTRY[name].split(":")
    backend = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(backend, Backend) or backend.name != name:
        raise InternalError(f"registry entry {name!r} -> {REGISTRY[name]} is not a Backend named {name!r}")
    return backend
