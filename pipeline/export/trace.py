"""trace: load the model, hold it to its declared streaming I/O, check streaming == batch, and
capture the explicit-state forward as a graph: an ExportedProgram (`torch.export`), or, only
when that fails, a TorchScript trace; the contract says which route made it and why.

Standard recurrent layers are first swapped for adapters with the same parameters
(`adapters.py`), checked against the original model on real chunks. The captured graph is the
PyTorch reference every backend is compared with and the input of the ONNX export, so every
downstream stage starts from exactly the same graph.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from pipeline.cache import Artifact
from pipeline.contract import Contract, ExportRoute, identity_bindings, usage_steps, write_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import UserError
from pipeline.manifest import ModelRef
from pipeline.spec import ChunkLength, StreamSpec

PROGRAM = "model.pt2"  # torch.export.save
SCRIPT = "model.pt"  # the TorchScript fallback


class TraceConfig(StageConfig):
    target: str = Field(description="Target name, recorded in the contract.")
    factory: str = Field(description="Model factory, 'module:callable'.")
    kwargs: dict[str, Any] = Field(description="Factory keyword arguments.")
    checkpoint_sha256: str = Field(description="Digest of the checkpoint file (the path itself is not hashed).")
    source_sha256: str = Field(description="Digest of the model's Python source package.")
    io: StreamSpec | None = Field(description="Manifest-declared streaming I/O, or None for the model's own spec.")
    chunk: ChunkLength = Field(description="Chunk length to trace at, in the unit the manifest lists it.")
    consistency_chunks: int = Field(64, description="Chunks streamed when comparing with the batch forward.")
    consistency_atol: float = Field(1e-5, description="Largest streaming-vs-batch difference accepted, per unit of output magnitude above 1.")
    checkpoint: Path = Field(exclude=True, description="Where to read the checkpoint (not part of the key).")
    python_path: tuple[Path, ...] = Field((), exclude=True, description="Extra import paths (not part of the key).")


def _example_chunks(spec: StreamSpec, count: int) -> list[list[np.ndarray]]:
    """Deterministic inputs in a plausible range: log-mel-like frames or quiet noise for PCM."""
    rng = np.random.default_rng(0)
    chunks = []
    for _ in range(count):
        if spec.frontend.kind == "pcm":
            chunks.append([(0.1 * rng.standard_normal(i.shape)).astype(np.float32) for i in spec.inputs])
        else:
            chunks.append([(rng.standard_normal(i.shape) * 2.0 - 6.0).astype(np.float32) for i in spec.inputs])
    return chunks


def check_streaming_matches_batch(model: Any, spec: StreamSpec, count: int, atol: float) -> float | None:
    """Stream `count` chunks from the initial state; compare with forward_batch on their concatenation."""
    import torch

    if not hasattr(model, "forward_batch"):
        return None
    chunks = _example_chunks(spec, count)
    state = [torch.full(s.shape, s.init) for s in spec.states]
    streamed: list[list[torch.Tensor]] = [[] for _ in spec.outputs]
    with torch.no_grad():
        for chunk in chunks:
            results = model(*map(torch.from_numpy, chunk), *state)
            for k in range(len(spec.outputs)):
                streamed[k].append(results[k])
            state = list(results[len(spec.outputs):])
        whole = [torch.from_numpy(np.concatenate([c[k] for c in chunks], axis=i.time_axis)) for k, i in enumerate(spec.inputs)]
        batch = model.forward_batch(*whole)
    worst = 0.0
    for k, output in enumerate(spec.outputs):
        joined = torch.cat(streamed[k], dim=output.time_axis)
        if tuple(joined.shape) != tuple(batch[k].shape):
            raise UserError(
                f"output {output.name!r}: streamed chunks concatenate to {tuple(joined.shape)} but forward_batch "
                f"returns {tuple(batch[k].shape)}",
                where="model.forward_batch",
            )
        error = float((joined - batch[k]).abs().max())
        # float32 rounding grows with the values: chunked and whole-sequence kernels sum in different orders
        allowed = atol * max(1.0, float(batch[k].abs().max()))
        worst = max(worst, error)
        if error > allowed:
            raise UserError(
                f"output {output.name!r}: streaming chunk by chunk differs from forward_batch by {error:.3g} "
                f"(allowed {allowed:.3g}: {atol:g} x max(1, |output|)) over {count} chunks; "
                "the streaming state does not carry what the batch model sees",
                where="model.forward",
            )
    return worst


def strip_provenance(path: Path) -> None:
    """Rewrite a saved TorchScript archive without what ties its bytes to this process and checkout.

    `*.debug_pkl` records the Python call stack with absolute paths, and `serialization_id` is random
    per save; neither is needed to load or run the module. (A class traced twice in one process still
    gets mangled names: trace bytes can differ between a sequential and a parallel build, the ONNX
    exported from them does not.)
    """
    import hashlib
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist() if not info.filename.endswith(".debug_pkl")]
    content = hashlib.sha256(b"".join(data for name, data in entries if not name.endswith("serialization_id"))).hexdigest()
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, content[:20].encode() if name.endswith("serialization_id") else data)
    tmp.replace(path)


def write_model_tolerances(model: Any, out: Path) -> None:
    """The model's own `default_tolerances()` (precision -> bounds), checked, for verify to apply over the backend's."""
    import json

    from pydantic import ValidationError

    from pipeline.verify.gates import MODEL_TOLERANCES_FILE, Tolerance

    declare = getattr(model, "default_tolerances", None)
    if declare is None:
        return
    declared = declare()
    if not isinstance(declared, dict):
        raise UserError(f"default_tolerances() returned {type(declared).__name__}, expected a dict precision -> bounds", where="model.default_tolerances")
    checked = {}
    for precision, bounds in declared.items():
        try:
            checked[str(precision)] = Tolerance.model_validate(bounds.model_dump(exclude_unset=True) if isinstance(bounds, Tolerance) else bounds)
        except ValidationError as exc:
            raise UserError(f"default_tolerances()[{precision!r}]: {exc.errors()[0]['msg']} ({exc.errors()[0]['loc']})", where="model.default_tolerances") from None
    document = {p: t.model_dump(exclude_unset=True) for p, t in sorted(checked.items())}
    (out / MODEL_TOLERANCES_FILE).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


def check_against(model: Any, captured: Any, spec: StreamSpec, what: str, atol: float) -> None:
    """`captured` must reproduce eager `model` chunk by chunk on real values, each carrying the model's state."""
    import torch

    from pipeline.model import initial_state

    state = [torch.from_numpy(v) for v in initial_state(spec).values()]
    with torch.no_grad():
        for chunk in _example_chunks(spec, 8):
            eager = model(*map(torch.from_numpy, chunk), *state)
            got = captured(*map(torch.from_numpy, chunk), *state)
            for name, a, b in zip(spec.output_names, eager, got):
                allowed = atol * max(1.0, float(a.abs().max()))
                if tuple(a.shape) != tuple(b.shape) or not float((a - b).abs().max()) <= allowed:
                    difference = float((a - b).abs().max()) if a.shape == b.shape else f"shape {tuple(b.shape)}"
                    raise UserError(
                        f"{what} does not reproduce eager output {name!r} (max diff {difference}, allowed {allowed:.3g}); "
                        "forward may have data-dependent control flow",
                        where="model.forward",
                    )
            state = list(eager[len(spec.outputs):])


def _user_frame(text: str) -> str | None:
    """The last `File "...", line N, in fn` of the user's own code in an exporter's message or traceback."""
    frames = [m for m in re.findall(r'File "([^"]+)", line (\d+), in (\w+)', text) if "site-packages" not in m[0] and "/pipeline/" not in m[0]]
    return f"{frames[-1][0]}:{frames[-1][1]} in {frames[-1][2]}" if frames else None


def _failed_op(text: str) -> str | None:
    found = re.findall(r"(aten(?:::|\.)\w+)", text)
    return found[-1].replace(".", "::", 1) if found else None


def capture(model: Any, example: tuple, spec: StreamSpec, out: Path, node_id: str) -> tuple[ExportRoute, str]:
    """torch.export, else torch.jit.trace; every exporter's full output goes to a log whose path a failure names."""
    import contextlib
    import io
    import traceback

    import torch

    from pipeline.export.logs import exporter_log

    log_path = exporter_log(node_id)
    transcript = io.StringIO()
    try:
        with contextlib.redirect_stdout(transcript), contextlib.redirect_stderr(transcript):
            program = torch.export.export(model, example)
        check_against(model, program.module(), spec, "the ExportedProgram", atol=1e-5)
        torch.export.save(program, str(out / PROGRAM))
        return ExportRoute(route="torch.export"), PROGRAM
    except UserError:
        raise
    except Exception:
        export_failure = traceback.format_exc()
        transcript.write(export_failure)
    # the exception line that says what went wrong, not the exporter's closing advice
    errors = [line for line in export_failure.splitlines() if re.match(r"^([a-z_]\w*\.)*[A-Z]\w*: ", line) and "error above occurred" not in line]
    reason = " ".join((errors[-1] if errors else export_failure.strip().splitlines()[-1]).split())[:240]
    try:
        with contextlib.redirect_stdout(transcript), contextlib.redirect_stderr(transcript), torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
        check_against(model, traced, spec, "torch.jit.trace", atol=1e-6)
    except Exception as exc:  # UserError: the trace ran but is wrong; anything else: it did not run
        wrong = isinstance(exc, UserError)
        if not wrong:
            transcript.write(traceback.format_exc())
        log_path.write_text(transcript.getvalue())
        where, op = _user_frame(transcript.getvalue()), _failed_op(transcript.getvalue())
        fallback = f"the TorchScript fallback is wrong: {str(exc).split(': ', 1)[-1]}" if wrong else "torch.jit.trace failed too"
        raise UserError(
            f"the model could not be captured as a graph: torch.export failed ({reason}"
            + (f"; op {op}" if op else "")
            + (f" at {where}" if where else "")
            + f"), and {fallback}. Full exporter output: {log_path}",
            where="model.forward",
            hint="read no tensor's shape or value as a Python number in forward, keep shapes and slices static; "
            "see docs/bring-your-own-model.md",
        ) from None
    traced.save(str(out / SCRIPT))
    strip_provenance(out / SCRIPT)
    return ExportRoute(route="torch.jit.trace", reason=reason), SCRIPT


class TraceStage(Stage):
    name = "trace"
    version = "7"
    tools = ("torch", "numpy")
    Config = TraceConfig

    @classmethod
    def run(cls, config: TraceConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        import torch

        from pipeline.export.adapters import adapt
        from pipeline.model import build_model, check_io, initial_state, resolve_spec

        torch.manual_seed(0)
        ref = ModelRef(factory=config.factory, kwargs=config.kwargs, checkpoint=config.checkpoint, python_path=config.python_path)
        model = build_model(ref)
        spec, where = resolve_spec(model, config.io, config.factory, config.chunk)
        check_io(model, spec, where)
        worst = check_streaming_matches_batch(model, spec, config.consistency_chunks, config.consistency_atol)
        ctx.log(f"streaming vs batch max abs difference: {worst if worst is not None else 'no forward_batch'}")

        adapted, adapters = adapt(model)
        for line in adapters:
            ctx.log(f"adapter: {line}")
        if adapters:
            check_against(model, adapted, spec, f"the adapted model ({'; '.join(adapters)})", atol=1e-5)
        example = tuple([torch.zeros(i.shape) for i in spec.inputs] + [torch.from_numpy(v) for v in initial_state(spec).values()])
        route, artifact = capture(adapted, example, spec, out, ctx.node_id)
        ctx.log(f"captured with {route.route}" + (f" (torch.export failed: {route.reason})" if route.reason else ""))
        route = route.model_copy(update={"adapters": tuple(adapters)})
        write_model_tolerances(model, out)
        write_contract(
            out,
            Contract(
                target=config.target,
                model=config.factory,
                backend="torch",
                precision="fp32",
                artifact=artifact,
                stream=spec,
                bindings=identity_bindings(spec),
                usage=usage_steps(spec),
                export=route,
            ),
        )
