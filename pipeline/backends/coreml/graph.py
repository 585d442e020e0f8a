"""The captured PyTorch graph -> a Core ML ML Program, with the contract's names, and errors that name the layer.

coremltools takes the trace stage's ExportedProgram (or its TorchScript fallback) directly. An
ExportedProgram converts first as captured (`run_decompositions({})`, which keeps `linear`, `lstm`
and friends as coremltools' fused ops), and only if coremltools has no conversion for one of its
ops, lowered to core ATen (`run_decompositions()`), where every op is one it has a rule for. Either
route's result is held to PyTorch numerically by the stage before it is used.

The stateful variant wraps the captured graph in a module whose recurrent state lives in fp16
buffers updated by slice assignment, the one form coremltools' iOS 18 `StateType` conversion takes
(measured: fp32 states and whole-tensor reassignment are refused), traced with `torch.jit.trace`.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.contract import Contract
from pipeline.errors import ToolchainError

ROUTE_AS_CAPTURED = "ExportedProgram as captured"
ROUTE_CORE_ATEN = "ExportedProgram lowered to core ATen (coremltools has no rule for an op as captured)"
ROUTE_TORCHSCRIPT = "TorchScript module (the trace stage's fallback)"
ROUTE_STATEFUL = "captured graph with its state in fp16 buffers, torch.jit.trace"


@contextlib.contextmanager
def quiet():
    """coremltools' progress bars and warnings (the converter's full output is not the build's)."""
    log = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        warnings.simplefilter("ignore")
        yield log


def buffer_name(state_input: str, taken: set[str]) -> str:
    """A Python identifier for the state buffer (the name the app sees in the model's state description)."""
    name = re.sub(r"\W", "_", state_input)
    name = name if name and not name[0].isdigit() else f"state_{name}"
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def state_buffer_names(contract: Contract) -> dict[str, str]:
    taken: set[str] = set()
    return {s.input: buffer_name(s.input, taken) for s in contract.stream.states}


def load_captured(trace_dir: Path, contract: Contract) -> tuple[Any, bool]:
    """(ExportedProgram or TorchScript module, whether it is an ExportedProgram)."""
    import torch

    path = trace_dir / contract.artifact
    if path.suffix == ".pt2":
        return torch.export.load(str(path)), True
    return torch.jit.load(str(path), map_location="cpu").eval(), False


def _tensor_types(contract: Contract, stateful: bool) -> tuple[list, list, list]:
    import coremltools as ct
    import numpy as np

    spec = contract.stream
    inputs = [ct.TensorType(name=i.name, shape=i.shape, dtype=np.float32) for i in spec.inputs]
    outputs = [ct.TensorType(name=o.name, dtype=np.float32) for o in spec.outputs]
    states: list = []
    if stateful:
        names = state_buffer_names(contract)
        states = [ct.StateType(wrapped_type=ct.TensorType(shape=s.shape, dtype=np.float16), name=names[s.input]) for s in spec.states]
    else:
        inputs += [ct.TensorType(name=s.input, shape=s.shape, dtype=np.float32) for s in spec.states]
        outputs += [ct.TensorType(name=s.output, dtype=np.float32) for s in spec.states]
    return inputs, outputs, states


def stateful_module(captured: Any, is_program: bool, contract: Contract) -> Any:
    """The captured graph with its recurrent state in fp16 buffers: forward(chunk inputs) -> non-state outputs."""
    import torch

    spec = contract.stream
    graph = captured.module() if is_program else captured
    names = state_buffer_names(contract)

    class InModelState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.step = graph  # not `graph`: TorchScript modules have a `.graph` of their own
            for s in spec.states:
                self.register_buffer(names[s.input], torch.full(s.shape, s.init, dtype=torch.float16))

        def forward(self, *chunk: torch.Tensor) -> tuple[torch.Tensor, ...]:
            buffers = [getattr(self, names[s.input]) for s in spec.states]
            results = self.step(*chunk, *(b.to(torch.float32) for b in buffers))
            count = len(spec.outputs)
            for buffer, new in zip(buffers, results[count:]):
                buffer[:] = new.to(torch.float16)  # slice assignment: the form coremltools turns into a state update
            return tuple(results[:count])

    module = InModelState()
    module.training = False  # not .eval(): an ExportedProgram's module refuses train(), and it holds no training-mode layer
    return module


@dataclass
class Converted:
    model: Any  # coremltools MLModel
    route: str  # how the captured graph reached coremltools
    kept_fp32: tuple[str, ...]  # ops of an fp16-compute program that compute in fp32 (the raw-PCM spectrum)


def convert(
    trace_dir: Path, contract: Contract, precision: str, deployment_target: str, variant: str, where: str, fp32_spectrum: bool = True
) -> Converted:
    """fp16 compute for every precision but fp32 (a raw-PCM model's spectrum in fp32 if `fp32_spectrum`); the
    stateful variant as an iOS 18 model."""
    import coremltools as ct
    import torch

    from pipeline.backends.coreml.precision import Fp16Except

    stateful = precision == "stateful"
    selector = Fp16Except({i.name for i in contract.stream.inputs}) if fp32_spectrum and contract.stream.frontend.kind == "pcm" else None
    if precision == "fp32":
        compute = ct.precision.FLOAT32
    else:
        compute = ct.transform.FP16ComputePrecision(op_selector=selector) if selector is not None else ct.precision.FLOAT16
    inputs, outputs, states = _tensor_types(contract, stateful)
    target = getattr(ct.target, deployment_target)  # "iOS16" / "iOS17" / "iOS18", validated by the stage's config
    captured, is_program = load_captured(trace_dir, contract)
    spec = contract.stream

    def run(source: Any, route: str) -> Converted:
        with quiet():
            model = ct.convert(
                source,
                inputs=inputs,
                outputs=outputs,
                states=states or None,
                convert_to="mlprogram",
                compute_precision=compute,
                minimum_deployment_target=target,
                skip_model_load=True,  # Core ML itself is macOS-only; the session loads the saved package
            )
        return Converted(model, route, tuple(selector.kept) if selector is not None and precision != "fp32" else ())

    if stateful:
        module = stateful_module(captured, is_program, contract)
        example = tuple(torch.zeros(i.shape) for i in spec.inputs)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example, check_trace=False)
        return _attempt(lambda: run(traced, ROUTE_STATEFUL), captured if is_program else None, variant, where)
    if not is_program:
        return _attempt(lambda: run(captured, ROUTE_TORCHSCRIPT), None, variant, where)
    try:
        return run(captured.run_decompositions({}), ROUTE_AS_CAPTURED)
    except Exception as first:  # coremltools has no rule for an op as captured: retry on core ATen, which it covers
        if not _unsupported_op(str(first)):
            raise _conversion_error(first, captured, variant, where) from None
    return _attempt(lambda: run(captured.run_decompositions(), ROUTE_CORE_ATEN), captured, variant, where)


def _attempt(convert_once, program: Any, variant: str, where: str) -> Converted:
    try:
        return convert_once()
    except Exception as exc:  # every coremltools failure becomes one error naming the op and the layer
        raise _conversion_error(exc, program, variant, where) from None


def _unsupported_op(message: str) -> str | None:
    for pattern in (r"Unsupported fx node (\w+)", r"convert function for op '(\w+)' not implemented", r"op '(\w+)' not implemented"):
        found = re.search(pattern, message)
        if found:
            return found.group(1)
    return None


def layer_of(program: Any, op: str) -> str | None:
    """'layer (Class) at file:line' of the first node calling `op` in the ExportedProgram, from its metadata."""
    if program is None:
        return None
    for node in program.graph.nodes:
        target = str(getattr(node.target, "__name__", node.target))
        if node.op == "call_function" and target.split(".")[0] == op:
            stack = node.meta.get("nn_module_stack") or {}
            path, kind = (list(stack.values())[-1] if stack else ("", ""))
            layer = f"layer {path or '(top level)'} ({kind.__name__ if isinstance(kind, type) else str(kind).split('.')[-1]})"
            trace = node.meta.get("stack_trace") or ""
            files = re.findall(r'File "([^"]+)", line (\d+)', trace)
            return layer + (f" at {Path(files[-1][0]).name}:{files[-1][1]}" if files else "")
    return None


def _conversion_error(exc: Exception, program: Any, variant: str, where: str) -> ToolchainError:
    message = " ".join(str(exc).split())[:400]
    op = _unsupported_op(message)
    layer = layer_of(program, op) if op else None
    if op:
        text = f"coremltools has no conversion for op {op!r}" + (f" ({layer})" if layer else "") + (
            ", neither as captured nor lowered to core ATen; write the layer with ops Core ML takes (see docs/bring-your-own-model.md)"
        )
    else:
        text = f"coremltools could not convert the captured graph: {type(exc).__name__}: {message}"
    return ToolchainError(text, tool="coremltools", stage=where, variant=variant, op=op)
