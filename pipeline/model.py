"""Load the user's streaming model from a manifest and hold it to its declared I/O."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pipeline.cache import digest_files
from pipeline.errors import UserError
from pipeline.manifest import ModelRef
from pipeline.spec import ChunkLength, StreamSpec, format_ms

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def _extend_path(ref: ModelRef) -> None:
    for entry in (REPO_ROOT, *ref.python_path):
        if str(entry) not in sys.path:
            sys.path.insert(0, str(entry))


def source_digest(ref: ModelRef) -> str:
    """Digest of the Python source the factory comes from: its whole top-level package, or its module file.

    Hashing the package, not just the module, catches edits to helpers the model imports.
    """
    _extend_path(ref)
    top = ref.factory.split(":")[0].split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise UserError(f"cannot find module {top!r} on the Python path", where="model.factory")
    if spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
        return digest_files([p for p in root.rglob("*.py") if "__pycache__" not in p.parts], root)
    origin = Path(spec.origin or "")
    return digest_files([origin], origin.parent)


def import_factory(ref: ModelRef) -> Callable[..., Any]:
    _extend_path(ref)
    module_name, attribute = ref.factory.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"cannot import {module_name!r}: {exc}",
            where="model.factory",
            hint="the module must be importable from the repo root, model.python_path or PYTHONPATH",
        ) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        available = sorted(n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise UserError(
            f"{module_name!r} has no callable {attribute!r}; callables there: {available[:8]}", where="model.factory"
        )
    return factory


def load_state_dict(path: Path) -> dict[str, "torch.Tensor"]:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # every loader failure here means the file is not a usable checkpoint
        raise UserError(f"cannot read checkpoint {path}: {exc}", where="model.checkpoint") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, expected a state dict", where="model.checkpoint")
    return state


def torch_module() -> type:
    import torch

    return torch.nn.Module


def build_model(ref: ModelRef) -> "torch.nn.Module":
    factory = import_factory(ref)
    try:
        model = factory(**ref.kwargs)
    except TypeError as exc:
        raise UserError(f"{ref.factory}(**{ref.kwargs}) failed: {exc}", where="model.kwargs") from None
    except Exception as exc:  # the user's own code raised: their input to fix, not a bug in speechport
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise UserError(
            f"{ref.factory}(**{ref.kwargs}) raised {type(exc).__name__}: {exc} (at {frame.filename}:{frame.lineno})",
            where="model.factory",
        ) from None
    if not isinstance(model, torch_module()):
        raise UserError(f"{ref.factory} returned {type(model).__name__}, expected a torch.nn.Module", where="model.factory")
    state = load_state_dict(ref.checkpoint)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{name} {tuple(state[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in sorted(set(state) & set(expected))
        if tuple(state[name].shape) != tuple(expected[name].shape)
    ]
    if missing or unexpected or mismatched:
        raise UserError(
            f"{ref.checkpoint.name} does not fit {ref.factory}(**{ref.kwargs}): missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {mismatched[:3]}",
            where="model.checkpoint",
            hint="check model.kwargs against the checkpoint's training configuration",
        )
    model.load_state_dict(state)
    return model.eval()


def _declare_spec(declare: Callable[..., Any], factory: str, chunk: ChunkLength) -> Any:
    """Call the model's streaming_spec with the chunk length in the unit the manifest lists it.

    The zoo's protocol is `streaming_spec(chunk_ms)`; a model that counts in samples declares a
    `chunk_samples` parameter. A length in one unit is never passed to a parameter of the other.
    """
    import inspect

    try:
        parameters = inspect.signature(declare).parameters
    except (TypeError, ValueError):
        parameters = {}
    if chunk.unit == "samples" and "chunk_samples" in parameters:
        call, args, kwargs = f"streaming_spec(chunk_samples={chunk.value})", (), {"chunk_samples": chunk.value}
    elif chunk.unit == "ms" and "chunk_ms" in parameters:
        call, args, kwargs = f"streaming_spec(chunk_ms={chunk.value})", (), {"chunk_ms": chunk.value}
    elif chunk.unit == "ms" and "chunk_samples" not in parameters:
        call, args, kwargs = f"streaming_spec({chunk.value})", (chunk.value,), {}
    else:
        takes = "chunk_ms" if chunk.unit == "samples" else "chunk_samples"
        raise UserError(
            f"the manifest lists {chunk.field} but {factory}'s streaming_spec takes no {chunk.field} parameter "
            f"(it takes {takes})",
            where=chunk.field,
            hint=f"list the chunk lengths as {takes}, or give streaming_spec a {chunk.field} parameter",
        )
    try:
        return declare(*args, **kwargs)
    except Exception as exc:  # the user's own code refusing a chunk length is their input to fix
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise UserError(
            f"{factory}: {call} raised {type(exc).__name__}: {exc} (at {frame.filename}:{frame.lineno})",
            where="model.streaming_spec",
            hint=f"list a {chunk.field} the model supports",
        ) from None


def resolve_spec(model: "torch.nn.Module", io: StreamSpec | None, factory: str, chunk: ChunkLength) -> tuple[StreamSpec, str]:
    """The manifest's explicit io, else the model's own streaming_spec at `chunk`; and the field to blame if it is wrong."""
    if io is not None:
        spec, where = io, "io"
    else:
        declare = getattr(model, "streaming_spec", None)
        if declare is None:
            raise UserError(
                f"{factory} has no streaming_spec(chunk_ms) method and the manifest declares no io",
                where="io",
                hint="declare io: {chunk_samples, frontend, inputs, states, outputs} in the manifest",
            )
        spec = _declare_spec(declare, factory, chunk)
        if not isinstance(spec, StreamSpec):
            raise UserError(f"streaming_spec returned {type(spec).__name__}, expected pipeline.spec.StreamSpec", where="model.factory")
        where = "model.streaming_spec"
    if not chunk.matches(spec):
        raise UserError(
            f"asked for a chunk of {chunk.value} {'ms' if chunk.unit == 'ms' else 'samples'}, {where} describes "
            f"{spec.chunk_samples} samples ({format_ms(spec.chunk_ms)} ms)",
            where=f"{where}.chunk_samples",
        )
    return spec, where


def initial_state(spec: StreamSpec) -> dict[str, Any]:
    import numpy as np

    return {s.input: np.full(s.shape, s.init, dtype=s.dtype) for s in spec.states}


def check_io(model: "torch.nn.Module", spec: StreamSpec, where: str) -> None:
    """Run one call with zeros and the initial state; the results must match the declared outputs and states."""
    import numpy as np
    import torch

    feeds = [torch.zeros(i.shape, dtype=getattr(torch, i.dtype)) for i in spec.inputs]
    feeds += [torch.from_numpy(v) for v in initial_state(spec).values()]
    try:
        with torch.no_grad():
            results = model(*feeds)
    except Exception as exc:  # the user's forward failing on declared shapes is a user error
        shapes = {n: tuple(f.shape) for n, f in zip(spec.input_names, feeds)}
        raise UserError(f"forward failed on the declared input shapes {shapes}: {type(exc).__name__}: {exc}", where=f"{where}.inputs") from None
    results = results if isinstance(results, (tuple, list)) else (results,)
    expected = [(f"outputs[{k}]", o.name, o.shape, o.dtype) for k, o in enumerate(spec.outputs)]
    expected += [(f"states[{k}]", s.output, s.shape, s.dtype) for k, s in enumerate(spec.states)]
    if len(results) != len(expected):
        raise UserError(
            f"forward returned {len(results)} tensors, expected {len(expected)} "
            f"({len(spec.outputs)} outputs then {len(spec.states)} states: {[e[1] for e in expected]})",
            where=f"{where}.outputs",
        )
    for (field, name, shape, dtype), value in zip(expected, results):
        got = tuple(np.shape(value))
        if got != tuple(shape):
            raise UserError(f"{name}: declared shape {tuple(shape)}, forward returned {got}", where=f"{where}.{field}.shape")
        if str(value.dtype).replace("torch.", "") != dtype:
            raise UserError(f"{name}: declared dtype {dtype}, forward returned {value.dtype}", where=f"{where}.{field}.dtype")
