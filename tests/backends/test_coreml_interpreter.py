"""speechport's MIL reference interpreter against coremltools' own value inference and PyTorch.

Tiny modules are converted inline (no artifacts cache), each variant once per module.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("coremltools")

from torch import nn  # noqa: E402

from pipeline.backends.coreml.activations import quantize_activations  # noqa: E402
from pipeline.backends.coreml.interpreter import (  # noqa: E402
    MilInterpreter,
    UnsupportedMilOp,
    activation_ranges,
    load_program,
)


class TinyOps(nn.Module):
    """One chunk of a streaming conv/attention block: most ops the zoo's conversions produce."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv1d(8, 8, 3, groups=8, dilation=2)
        self.norm = nn.LayerNorm(8)
        self.proj = nn.Linear(8, 12)
        self.register_buffer("order", torch.tensor([3, 0, 2, 1]))

    def forward(self, x: torch.Tensor, buf_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        buf = torch.cat([buf_in, x], dim=2)  # [1, 8, 4 + 6]
        y = self.depthwise(torch.relu(self.conv(buf)))  # [1, 8, 6]
        t = self.norm(y.transpose(1, 2))  # [1, 6, 8]
        q, k, v = self.proj(t).split(4, dim=-1)
        z = torch.softmax(q @ k.transpose(1, 2) * 0.5, dim=-1) @ v
        z = nn.functional.gelu(z) + nn.functional.silu(z) * torch.sigmoid(z) - torch.tanh(z)
        z = torch.log(torch.abs(z) + 1.0) + z.mean(dim=1, keepdim=True)
        z = (torch.clamp(z, -0.5, 0.5) + nn.functional.leaky_relu(z, 0.1) + nn.functional.gelu(z, approximate="tanh")
             + torch.exp(-z * z) / torch.sqrt(z * z + 1.0) + z.amax(dim=1, keepdim=True) + z.sum(dim=1, keepdim=True))
        z = nn.functional.pad(z, (0, 0, 1, 0))[:, 1:]
        z = z + z.index_select(2, self.order) + z[:, :1].expand(1, 6, 4)  # gather, tile
        out = torch.stack([z[:, :, 0], z[:, :, 3]], dim=-1).reshape(1, 12)
        return out, buf[:, :, -4:]


class TinyCell(nn.Module):
    """An explicit-gate LSTM cell with a linear head: the recurrent shape of models.lstm_ctc."""

    def __init__(self) -> None:
        super().__init__()
        self.gates = nn.Linear(6 + 8, 32)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor, h_in: torch.Tensor, c_in: torch.Tensor):
        i, f, g, o = self.gates(torch.cat([x, h_in], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c_in + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return self.head(h), h, c


class StatefulCell(nn.Module):
    """TinyCell with h and c as registered buffers updated by slice assignment (ct.StateType)."""

    def __init__(self, cell: TinyCell) -> None:
        super().__init__()
        self.cell = cell
        self.register_buffer("h_in", torch.zeros(1, 8))
        self.register_buffer("c_in", torch.zeros(1, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, h, c = self.cell(x, self.h_in, self.c_in)
        self.h_in[:] = h
        self.c_in[:] = c
        return logits


OPS_INPUTS = {"x": (1, 8, 6), "buf_in": (1, 8, 4)}
OPS_OUTPUTS = ("out", "buf_out")
CELL_INPUTS = {"x": (1, 6), "h_in": (1, 8), "c_in": (1, 8)}
CELL_OUTPUTS = ("logits", "h_out", "c_out")
ALL_ELEMENTS = ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0)


def _seeded(module_type: type) -> nn.Module:
    torch.manual_seed(0)
    return module_type().eval()


def _convert(module: nn.Module, inputs: dict, outputs: tuple, precision: str, target: Any = None) -> Any:
    args = tuple(torch.zeros(shape) for shape in inputs.values())
    program = torch.export.export(module, args).run_decompositions({})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.convert(
            program,
            inputs=[ct.TensorType(name=name, shape=shape) for name, shape in inputs.items()],
            outputs=[ct.TensorType(name=name) for name in outputs],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
            minimum_deployment_target=target or ct.target.iOS17,
        )


def _save(mlmodel: Any, path: Path) -> Path:
    mlmodel.save(str(path))
    return path


def _samples(inputs: dict, count: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32) for name, shape in inputs.items()} for _ in range(count)]


def _torch_outputs(module: nn.Module, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in module(*[torch.from_numpy(v) for v in feeds.values()])]


def _weight_config(config: Any) -> Any:
    return ct.optimize.coreml.OptimizationConfig(global_config=config)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every variant the tests read, converted once: name -> .mlpackage."""
    out = tmp_path_factory.mktemp("mil")
    ops, cell = _seeded(TinyOps), _seeded(TinyCell)
    ops32 = _convert(ops, OPS_INPUTS, OPS_OUTPUTS, "fp32")
    ops16 = _convert(ops, OPS_INPUTS, OPS_OUTPUTS, "fp16")
    paths = {
        "ops_fp32": _save(ops32, out / "ops_fp32.mlpackage"),
        "ops_fp16": _save(ops16, out / "ops_fp16.mlpackage"),
        "ops_int8w": _save(ct.optimize.coreml.linear_quantize_weights(ops32, _weight_config(ALL_ELEMENTS)),
                           out / "ops_int8w.mlpackage"),
        "cell_fp32": _save(_convert(cell, CELL_INPUTS, CELL_OUTPUTS, "fp32", ct.target.iOS18), out / "cell_fp32.mlpackage"),
    }
    traced = torch.jit.trace(StatefulCell(cell), (torch.zeros(1, 6),), check_trace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stateful = ct.convert(
            traced,
            inputs=[ct.TensorType(name="x", shape=(1, 6))],
            outputs=[ct.TensorType(name="logits")],
            states=[ct.StateType(wrapped_type=ct.TensorType(shape=(1, 8), dtype=np.float16), name=n) for n in ("h_in", "c_in")],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT32,
            minimum_deployment_target=ct.target.iOS18,
        )
    paths["cell_stateful"] = _save(stateful, out / "cell_stateful.mlpackage")
    # iOS18 weight compression: blockwise shift/scale and per-block LUTs
    paths["cell_int8w_ios18"] = _save(ct.optimize.coreml.linear_quantize_weights(
        stateful, _weight_config(ALL_ELEMENTS)), out / "cell_int8w_ios18.mlpackage")
    palettize = ct.optimize.coreml.OpPalettizerConfig(mode="uniform", nbits=4, weight_threshold=0)
    paths["cell_lut_ios18"] = _save(ct.optimize.coreml.palettize_weights(stateful, _weight_config(palettize)),
                                    out / "cell_lut_ios18.mlpackage")
    paths["ops_lut_ios17"] = _save(ct.optimize.coreml.palettize_weights(ops32, _weight_config(palettize)),
                                   out / "ops_lut_ios17.mlpackage")
    ranges = activation_ranges(MilInterpreter(paths["ops_fp16"]), _samples(OPS_INPUTS, 8))
    a8 = quantize_activations(ops16, ranges, _weight_config(ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric")))
    paths["ops_w8a8"] = _save(ct.optimize.coreml.linear_quantize_weights(a8, _weight_config(ALL_ELEMENTS)),
                              out / "ops_w8a8.mlpackage")
    return paths


# value_inference that raises TypeError under numpy 2.4 even with the keep_dims workaround below (none so far).
COREMLTOOLS_BROKEN_VALUE_INFERENCE: set[str] = set()


def _with_value(var: Any, value: np.ndarray) -> None:
    holder = var.sym_type()
    holder.val = value
    var._sym_val = holder


@pytest.mark.parametrize("variant", ["ops_fp32", "ops_fp16", "ops_int8w", "ops_w8a8", "cell_stateful",
                                     "cell_int8w_ios18", "cell_lut_ios18", "ops_lut_ios17"])
def test_every_op_matches_coremltools_value_inference(converted: dict[str, Path], variant: str) -> None:
    interpreter = MilInterpreter(converted[variant])
    values: dict[str, np.ndarray] = {}
    feeds = _samples({name: shape for name, (shape, _) in interpreter.inputs.items()}, 1)[0]
    state = interpreter.make_state() if interpreter.states else None
    interpreter.run(feeds, state, observe=lambda name, value: values.__setitem__(name, np.array(value)))
    folded = {interpreter._names[slot]: value for slot, value in interpreter._constants.items()}
    main = load_program(converted[variant]).functions["main"]
    compared, broken, decompressed = set(), set(), set()
    for op in main.operations:
        if op.op_type.startswith("constexpr_"):
            np.testing.assert_allclose(folded[op.outputs[0].name], op.materialized_val_inference(), rtol=1e-6,
                                       atol=1e-7, err_msg=f"{variant}: {op.op_type} '{op.name}'")
            decompressed.add(op.op_type)
            continue
        if op.op_type == "const":
            continue
        for value in op.inputs.values():
            for var in value if isinstance(value, (list, tuple)) else [value]:
                source = values.get(var.name, folded.get(var.name))
                if source is not None and (var.op is None or var.op.op_type != "const"):
                    _with_value(var, source)
        if op.op_type.startswith("reduce_") and op.keep_dims is not None:
            op.keep_dims._sym_val.val = bool(op.keep_dims.val)  # np.bool_ keepdims: numpy 2.4's reductions refuse it
        try:
            expected = op.value_inference()
        except NotImplementedError:
            if not hasattr(op, "materialized_val_inference"):
                continue
            expected = op.materialized_val_inference()  # dequantize
        except TypeError:
            broken.add(op.op_type)  # coremltools' own numpy code, not ours: see COREMLTOOLS_BROKEN_VALUE_INFERENCE
            continue
        if expected is None:
            continue
        for var, want in zip(op.outputs, expected if isinstance(expected, tuple) else (expected,)):
            got = values.get(var.name, folded.get(var.name))
            fp16 = got.dtype == np.float16 or (op.op_type == "quantize" and op.input.dtype == ct.converters.mil.mil.types.fp16)
            assert got.dtype.kind == np.asarray(want).dtype.kind, (op.name, got.dtype, np.asarray(want).dtype)
            np.testing.assert_allclose(
                got.astype(np.float64), np.asarray(want, np.float64),
                rtol=4e-3 if fp16 else 1e-5, atol=(1 if got.dtype.kind in "iu" else 2e-3) if fp16 else 1e-6,
                err_msg=f"{variant}: {op.op_type} '{op.name}' -> {var.name} ({got.shape}, {got.dtype})")
        compared.add(op.op_type)
    expected_types = {
        "ops_fp32": {"add", "mul", "relu", "softmax", "sigmoid", "tanh", "log", "abs", "reduce_mean", "concat",
                     "split", "slice_by_index", "transpose", "reshape", "stack", "gelu", "linear", "matmul", "clip",
                     "leaky_relu", "exp", "sqrt", "real_div", "reduce_max", "reduce_sum", "pad", "sub", "gather", "tile"},
        "ops_w8a8": {"quantize", "dequantize", "add"},
        "cell_stateful": {"cast", "slice_update"},
    }.get(variant, set())
    assert expected_types <= compared | broken, f"{variant}: not compared: {sorted(expected_types - compared)}"
    assert broken <= COREMLTOOLS_BROKEN_VALUE_INFERENCE, f"{variant}: value_inference raised for {sorted(broken)}"
    compression = {"ops_int8w": "constexpr_affine_dequantize", "ops_w8a8": "constexpr_affine_dequantize",
                   "cell_int8w_ios18": "constexpr_blockwise_shift_scale", "cell_lut_ios18": "constexpr_lut_to_dense",
                   "ops_lut_ios17": "constexpr_lut_to_dense"}.get(variant)
    assert decompressed == ({compression} if compression else set())


def test_hand_written_ops_match_torch(converted: dict[str, Path]) -> None:
    """The whole block end to end, including conv (grouped, dilated, padded), which has no value inference."""
    program_ops = {op.op_type for op in load_program(converted["ops_fp32"]).functions["main"].operations}
    assert {"conv", "linear", "layer_norm", "matmul", "softmax"} <= program_ops
    module, interpreter = _seeded(TinyOps), MilInterpreter(converted["ops_fp32"])
    for feeds in _samples(OPS_INPUTS, 4):
        got = interpreter.run(feeds)
        for name, want in zip(OPS_OUTPUTS, _torch_outputs(module, feeds)):
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_fp16_program_carries_fp16_rounding(converted: dict[str, Path]) -> None:
    fp32, fp16 = MilInterpreter(converted["ops_fp32"]), MilInterpreter(converted["ops_fp16"])
    assert all(dtype == np.float16 for _, dtype in fp16.inputs.values())  # fp16 I/O unless TensorType(dtype=...)
    dtypes: set[np.dtype] = set()
    feeds = _samples(OPS_INPUTS, 1)[0]
    got16 = fp16.run(feeds, observe=lambda name, value: dtypes.add(value.dtype) if value.dtype.kind == "f" else None)
    assert dtypes == {np.dtype(np.float16)}
    got32 = fp32.run(feeds)
    difference = np.abs(got16["out"] - got32["out"]).max()
    scale = np.abs(got32["out"]).max()
    assert 1e-5 * scale < difference < 2e-2 * scale  # rounded like fp16, not like fp32, and not broken


def test_fp16_matches_torch_in_half() -> None:
    """Single ops in fp16: the interpreter rounds each result once, as torch's half kernels do."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).eval()
    mlmodel = _convert(module, {"x": (2, 16)}, ("y",), "fp16")
    path = Path(mlmodel.package_path)
    feeds = _samples({"x": (2, 16)}, 1)[0]
    got = MilInterpreter(path).run(feeds)["y"]
    with torch.no_grad():
        half = module.half()(torch.from_numpy(feeds["x"]).half()).float().numpy()
    ulp = np.spacing(np.abs(half).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(got - half) <= 2 * ulp + 1e-4)


def test_int8_weights_match_torch_with_dequantized_weights(converted: dict[str, Path]) -> None:
    module = _seeded(TinyOps)
    main = load_program(converted["ops_int8w"]).functions["main"]
    dequantized = [op.materialized_val_inference() for op in main.operations if op.op_type == "constexpr_affine_dequantize"]
    assert dequantized
    replaced = 0
    with torch.no_grad():
        for parameter in module.parameters():
            candidates = [w for w in dequantized if w.shape == tuple(parameter.shape)]
            if not candidates:
                continue
            best = min(candidates, key=lambda w: np.abs(w - parameter.numpy()).max())
            assert 0 < np.abs(best - parameter.numpy()).max() < 0.02
            parameter.copy_(torch.from_numpy(best.astype(np.float32)))
            replaced += 1
    assert replaced >= 3  # both convs' and the linear's weights
    interpreter = MilInterpreter(converted["ops_int8w"])
    for feeds in _samples(OPS_INPUTS, 3):
        got = interpreter.run(feeds)
        for name, want in zip(OPS_OUTPUTS, _torch_outputs(module, feeds)):
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_stateful_program_streams_like_the_explicit_state_program(converted: dict[str, Path]) -> None:
    stateful, explicit = MilInterpreter(converted["cell_stateful"]), MilInterpreter(converted["cell_fp32"])
    assert set(stateful.inputs) == {"x"} and stateful.outputs == ["logits"]
    assert stateful.states == {"h_in": ((1, 8), np.dtype(np.float16)), "c_in": ((1, 8), np.dtype(np.float16))}
    ops = [op.op_type for op in load_program(converted["cell_stateful"]).functions["main"].operations]
    assert ops.count("read_state") == 2 and ops.count("coreml_update_state") == 2
    chunks = _samples({"x": (1, 6)}, 50)
    state = stateful.make_state()
    carried = {"h_in": np.zeros((1, 8), np.float32), "c_in": np.zeros((1, 8), np.float32)}
    first = []
    for chunk in chunks:
        got = stateful.run(chunk, state)["logits"]
        want = explicit.run({**chunk, **carried})
        # the Core ML state is fp16: the explicit program's state, rounded the same way, carries over
        carried = {"h_in": want["h_out"].astype(np.float16).astype(np.float32),
                   "c_in": want["c_out"].astype(np.float16).astype(np.float32)}
        np.testing.assert_allclose(got, want["logits"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(state["h_in"].astype(np.float32), carried["h_in"])
        first.append(got)
    fresh = stateful.make_state()
    assert not np.any(fresh["h_in"]) and not np.any(fresh["c_in"])
    for chunk, expected in zip(chunks[:5], first):
        np.testing.assert_array_equal(stateful.run(chunk, fresh)["logits"], expected)
    with pytest.raises(ValueError, match="make_state"):
        stateful.run(chunks[0])


def test_unsupported_op_raises_at_load_naming_the_op(tmp_path: Path) -> None:
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.iOS17)
    def program(x: Any) -> Any:
        y = mb.relu(x=x, name="rectified")
        return mb.cumsum(x=y, axis=1, name="running_total")

    mlmodel = ct.convert(program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                         minimum_deployment_target=ct.target.iOS17)
    path = _save(mlmodel, tmp_path / "cumsum.mlpackage")
    with pytest.raises(UnsupportedMilOp, match=r"cumsum\.mlpackage: MIL op 'cumsum' \(output 'running_total', "
                                                r"op 'running_total', #\d+ of main\).*implemented: .*relu") as caught:
        MilInterpreter(path)
    assert caught.value.op_type == "cumsum"
    # a Core ML session on Linux turns it into a toolchain error (exit 4) that names the op
    from pipeline.backends.coreml.session import _Interpreted
    from pipeline.errors import ToolchainError

    with pytest.raises(ToolchainError) as wrapped:
        _Interpreted(path)
    assert wrapped.value.op == "cumsum" and "MIL op 'cumsum'" in str(wrapped.value) and wrapped.value.exit_code == 4


def test_w8a8_program_stays_within_8_bit_error_of_torch(converted: dict[str, Path]) -> None:
    ops = [op.op_type for op in load_program(converted["ops_w8a8"]).functions["main"].operations]
    assert ops.count("quantize") >= 3 and "constexpr_affine_dequantize" in ops
    module, interpreter = _seeded(TinyOps), MilInterpreter(converted["ops_w8a8"])
    for feeds in _samples(OPS_INPUTS, 4, seed=7):
        got = interpreter.run(feeds)
        for name, want in zip(OPS_OUTPUTS, _torch_outputs(module, feeds)):
            scale = np.abs(want).max()
            error = np.abs(got[name] - want).max()
            assert error < 0.1 * scale, f"{name}: max error {error:.4f} against max |value| {scale:.4f}"


def test_quantize_activations_builds_what_coremltools_builds_from_the_same_values(converted: dict[str, Path]) -> None:
    """coremltools' own calibration code, its predict() answered by the interpreter (one sample: its last-sample
    range update and our min/max agree), must yield the same quantize/dequantize ops as our ranges do."""
    from coremltools.optimize.coreml.experimental._model_debugger import ModelDebugger

    fp16_path = converted["ops_fp16"]
    interpreter, sample = MilInterpreter(fp16_path), _samples(OPS_INPUTS, 1, seed=3)[0]
    values: dict[str, np.ndarray] = {}
    interpreter.run(sample, observe=lambda name, value: values.__setitem__(name, np.array(value)))

    def predict_by_interpreter(self: Any, inputs: dict, names: list, compute_units: Any = None) -> dict:
        return {name: values[name] for name in names if name in values}

    config = _weight_config(ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric"))
    mlmodel = ct.models.MLModel(str(fp16_path), skip_model_load=True)
    with mock.patch.object(ModelDebugger, "predict_intermediate_outputs", predict_by_interpreter):
        theirs = ct.optimize.coreml.linear_quantize_activations(mlmodel, config, [sample])
    ours = quantize_activations(mlmodel, activation_ranges(interpreter, [sample]), config)

    def quantization(model: Any) -> list[tuple]:
        main = model._mil_program.functions["main"] if model._mil_program else None
        main = main or load_program(Path(model.package_path)).functions["main"]
        return [(op.op_type, float(op.scale.val), int(op.zero_point.val) if op.zero_point is not None else 0)
                for op in main.operations if op.op_type in ("quantize", "dequantize")]

    assert quantization(ours) == quantization(theirs)
    assert len(quantization(ours)) >= 6


class Residual(nn.Module):
    """A state output also read inside the model (h_out = add(...) -> concat -> head), as in models.kws."""

    def __init__(self) -> None:
        super().__init__()
        self.cell, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, h_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.cell(x)) + h_in * 0.5
        return self.head(torch.cat([h_in, h], dim=0)), h


def test_quantize_activations_names_the_ops_coremltools_cannot_quantize() -> None:
    inputs = {"x": (1, 8), "h_in": (1, 8)}
    mlmodel = _convert(_seeded(Residual), inputs, ("logits", "h_out"), "fp16")
    interpreter = MilInterpreter(Path(mlmodel.package_path))
    ranges = activation_ranges(interpreter, _samples(inputs, 4))
    main = load_program(Path(mlmodel.package_path)).functions["main"]
    (producer,) = [var.op.name for var in main.outputs if var.name == "h_out"]
    linear = ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric")
    with pytest.raises(ValueError, match=rf"op_name_configs=.*\['{producer}'\]"):
        quantize_activations(mlmodel, ranges, _weight_config(linear))
    config = ct.optimize.coreml.OptimizationConfig(global_config=linear, op_name_configs={producer: None})
    quantized = quantize_activations(mlmodel, ranges, config)
    got = MilInterpreter(Path(quantized.package_path)).run(_samples(inputs, 1)[0])
    assert set(got) == {"logits", "h_out"}


class TracedLstm(nn.Module):
    """nn.LSTM as a TorchScript trace keeps it whole: the MIL `lstm` op (torch.export would decompose it)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor, h_in: torch.Tensor, c_in: torch.Tensor):
        y, (h, c) = self.lstm(x, (h_in, c_in))
        return y, h, c


def test_lstm_op_matches_torch(tmp_path: Path) -> None:
    inputs = {"x": (1, 3, 6), "h_in": (2, 1, 8), "c_in": (2, 1, 8)}
    module = _seeded(TracedLstm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on nn.LSTM's Python-level checks
        traced = torch.jit.trace(module, tuple(torch.zeros(shape) for shape in inputs.values()))
        mlmodel = ct.convert(traced, inputs=[ct.TensorType(name=n, shape=s) for n, s in inputs.items()],
                             outputs=[ct.TensorType(name=n) for n in ("y", "h_out", "c_out")], convert_to="mlprogram",
                             compute_precision=ct.precision.FLOAT32, minimum_deployment_target=ct.target.iOS17)
    path = _save(mlmodel, tmp_path / "lstm.mlpackage")
    assert [op.op_type for op in load_program(path).functions["main"].operations].count("lstm") == 2
    interpreter = MilInterpreter(path)
    for feeds in _samples(inputs, 3):
        got = interpreter.run(feeds)
        for name, want in zip(("y", "h_out", "c_out"), _torch_outputs(module, feeds)):
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
