"""What a backend is: one object that says everything the pipeline needs to know about it.

A backend package exposes one `Backend`: its manifest options, its precisions (each with its
default tolerance and whether it needs calibration), the tool distributions in its stages' keys,
the lowering that adds its stages to the plan, its streaming session, and whether its latency
figures mean anything on a device. Toolchains load only inside its stages and session.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from pipeline.spec import ChunkLength
from pipeline.verify.gates import Tolerance

if TYPE_CHECKING:
    from pipeline.dag import Node
    from pipeline.session import StreamingSession


@dataclass(frozen=True)
class Precision:
    name: str
    description: str
    tolerance: Tolerance
    calibrated: bool = False  # needs (chunk, state) pairs recorded from the reference on real speech
    numerics: str = ""  # the precision with the same arithmetic, whose model-declared bounds apply ('' = this one)


@dataclass
class Lowering:
    """What the plan hands a backend for one chunk length: the upstream nodes and a way to add its own."""

    chunk: ChunkLength  # `chunk.label` ends node ids: one chain per chunk length
    traced: str  # node id of the traced PyTorch reference
    onnx: Callable[[], str]  # plans the ONNX export and simplification (once) and returns the simplified graph's node id
    options: Any  # the backend's options from the manifest (its `options` model), or None
    add: Callable[["Node"], str]  # add a node (once per id); returns its id
    calibration: Callable[[], str]  # the shared node recording real (chunk, state) pairs at this chunk length
    # (backend, precision, the quantize stage's config, its inputs, the options of the runtime a proxy-searched recipe is
    # confirmed on) -> the node id of the recipe search for that variant, or None where the manifest pins the recipe,
    # turns the search off, or the precision has nothing to search
    search: Callable[..., str | None] = lambda backend, precision, config, inputs, confirm=None: None


def _load(path: str) -> Any:
    module_name, attribute = path.split(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    precisions: tuple[Precision, ...]
    tools: tuple[str, ...]  # distributions whose versions key this backend's stages and its verification
    lowering: str  # "module:function(lowering: Lowering, precision: str) -> artifact node id"
    session: str  # "module:StreamingSession subclass"
    options: type[BaseModel] | None = None  # the manifest section named after the backend
    device_latency: bool = True  # False: its latency is a simulator's or an interpreter's, not a device's
    runtime_label: str = ""  # what executes the artifact during verification, for the report
    # "module:function(artifact_dir, chunks, outputs) -> dict": figures of the backend's own, computed by verify from
    # the artifact, the streamed chunks and the variant's streamed outputs, reported under `backend_figures`; "" for none
    figures: str = ""
    # "module:object" (a `pipeline.quant.quantizer.Quantizer`): how its quantized precisions are searched and built
    # with a recipe; "" for a backend without one
    quantizer: str = ""

    def precision(self, name: str) -> Precision:
        for precision in self.precisions:
            if precision.name == name:
                return precision
        raise KeyError(f"backend {self.name!r} has no precision {name!r}; it builds {self.precision_names}")

    @property
    def precision_names(self) -> list[str]:
        return [p.name for p in self.precisions]

    def lower(self, lowering: Lowering, precision: str) -> str:
        return _load(self.lowering)(lowering, precision)

    def open_session(self, artifact_dir: Path, threads: int = 1) -> "StreamingSession":
        return _load(self.session)(artifact_dir, threads=threads)

    def load_quantizer(self) -> Any:
        return _load(self.quantizer) if self.quantizer else None

    def extra_figures(self, artifact_dir: Path, chunks: list, outputs: dict) -> dict | None:
        return _load(self.figures)(artifact_dir, chunks, outputs) if self.figures else None
