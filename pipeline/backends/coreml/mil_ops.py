"""numpy kernels for the MIL ops that compute (elementwise, linear algebra, normalization).

Data movement and states are in `mil_layout`, quantization and compressed weights in
`mil_quant`; the interpreter merges their `OPS` tables.

Each builder runs once, at load: it reads the op's constant parameters, materializes
and pre-lays-out its weights, and returns a step `step(values)` that reads its inputs
from the flat value list and writes its outputs into it. Nothing here touches a MIL
object at run time.

Precision follows the program's types. A float op whose output is fp16 takes its fp16
inputs, computes in float32 and rounds the result to float16 (numpy's own float16
ufuncs do exactly that for single elementwise ops, so those run on fp16 directly);
composite kernels (sigmoid, softmax, layer_norm, linear, conv ...) go through float32
explicitly so that only the op's result is rounded.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import numpy as np

F32 = np.float32
Step = Callable[[list], None]
Values = list


class OpContext:
    """What a builder may ask about the op it compiles: slots, load-time constants, dtypes."""

    def __init__(self, slot_of: Callable[[Any], int], constant_of: Callable[[Any], np.ndarray | None]) -> None:
        self.slot = slot_of
        self.constant = constant_of

    def param(self, op: Any, name: str, default: Any = None) -> Any:
        """A parameter that must be known at load (axes, perm, masks, ...)."""
        var = op.inputs.get(name)
        if var is None:
            return default
        value = self.constant(var)
        if value is None:
            raise NotImplementedError(f"input '{name}' of {op.op_type} '{op.name}' is not a load-time constant")
        return value


def np_dtype(var: Any) -> np.dtype:
    from coremltools.converters.mil.mil import types

    return np.dtype(types.nptype_from_builtin(var.dtype))


def out_slot(op: Any, ctx: OpContext, index: int = 0) -> int:
    return ctx.slot(op.outputs[index])


def static_shape(var: Any) -> tuple[int, ...]:
    shape = tuple(var.shape)
    if not all(isinstance(d, (int, np.integer)) for d in shape):
        raise NotImplementedError(f"'{var.name}' has a symbolic shape {shape}; only static shapes are supported")
    return tuple(int(d) for d in shape)


def _float_op(op: Any, ctx: OpContext, kernel: Callable[..., np.ndarray], names: tuple[str, ...]) -> Step:
    """A composite float kernel: float32 in, float32 compute, rounded to the output's dtype."""
    ins = [ctx.slot(op.inputs[n]) for n in names]
    o, dtype = out_slot(op, ctx), np_dtype(op.outputs[0])
    if len(ins) == 1:
        (a,) = ins

        def step(v: Values) -> None:
            v[o] = kernel(v[a].astype(F32, copy=False)).astype(dtype, copy=False)

    else:

        def step(v: Values) -> None:
            v[o] = kernel(*[v[i].astype(F32, copy=False) for i in ins]).astype(dtype, copy=False)

    return step


# ---------------------------------------------------------------- elementwise

def _unary(ufunc: Callable[[np.ndarray], np.ndarray]) -> Callable[[Any, OpContext], Step]:
    def build(op: Any, ctx: OpContext) -> Step:
        a, o = ctx.slot(op.x), out_slot(op, ctx)

        def step(v: Values) -> None:
            v[o] = ufunc(v[a])

        return step

    return build


def _binary(ufunc: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[Any, OpContext], Step]:
    def build(op: Any, ctx: OpContext) -> Step:
        a, b, o = ctx.slot(op.x), ctx.slot(op.y), out_slot(op, ctx)
        dtype = np_dtype(op.outputs[0])

        def step(v: Values) -> None:
            v[o] = ufunc(v[a], v[b]).astype(dtype, copy=False)

        return step

    return build


def sigmoid32(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warning from exp(-x) for very negative x.
    r = x * F32(0.5)
    np.tanh(r, out=r)
    r *= F32(0.5)
    r += F32(0.5)
    return r


def _erf32(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and scipy is not a dependency.
    a = np.abs(x).astype(np.float64)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (np.sign(x) * (1.0 - poly * np.exp(-a * a))).astype(F32)


def _build_log(op: Any, ctx: OpContext) -> Step:
    eps = F32(ctx.param(op, "epsilon", 1e-45))
    return _float_op(op, ctx, lambda x: np.log(x + eps), ("x",))


def _build_eps_unary(kernel: Callable[[np.ndarray, np.float32], np.ndarray], default: float) -> Callable:
    def build(op: Any, ctx: OpContext) -> Step:
        eps = F32(ctx.param(op, "epsilon", default))
        return _float_op(op, ctx, lambda x: kernel(x, eps), ("x",))

    return build


def _build_gelu(op: Any, ctx: OpContext) -> Step:
    mode = str(ctx.param(op, "mode", "EXACT"))
    if mode == "TANH_APPROXIMATION":
        c = F32(math.sqrt(2.0 / math.pi))
        kernel = lambda x: F32(0.5) * x * (F32(1.0) + np.tanh(c * (x + F32(0.044715) * x * x * x)))
    elif mode == "SIGMOID_APPROXIMATION":
        kernel = lambda x: x * sigmoid32(F32(1.702) * x)
    else:
        kernel = lambda x: F32(0.5) * x * (F32(1.0) + _erf32(x * F32(1.0 / math.sqrt(2.0))))
    return _float_op(op, ctx, kernel, ("x",))


def _build_clip(op: Any, ctx: OpContext) -> Step:
    lo, hi = F32(ctx.param(op, "alpha")), F32(ctx.param(op, "beta"))
    return _float_op(op, ctx, lambda x: np.clip(x, lo, hi), ("x",))


def _build_leaky_relu(op: Any, ctx: OpContext) -> Step:
    alpha = F32(ctx.param(op, "alpha", 0.01))
    return _float_op(op, ctx, lambda x: np.where(x >= 0, x, alpha * x), ("x",))


def _build_cast(op: Any, ctx: OpContext) -> Step:
    a, o, dtype = ctx.slot(op.x), out_slot(op, ctx), np_dtype(op.outputs[0])

    def step(v: Values) -> None:
        v[o] = v[a].astype(dtype)

    return step


def _build_identity(op: Any, ctx: OpContext) -> Step:
    a, o = ctx.slot(op.x), out_slot(op, ctx)

    def step(v: Values) -> None:
        v[o] = v[a]

    return step


# ---------------------------------------------------------------- linear algebra

def _build_linear(op: Any, ctx: OpContext) -> Step:
    weight = ctx.constant(op.weight)
    if weight is None:
        raise NotImplementedError(f"linear '{op.name}' has a non-constant weight")
    weight_t = np.ascontiguousarray(weight.astype(F32).T)  # [in, out]: x @ weight_t without a per-call transpose
    bias = ctx.constant(op.bias) if op.bias is not None else None
    bias = None if bias is None or not np.any(bias) else bias.astype(F32)
    a, o, dtype = ctx.slot(op.x), out_slot(op, ctx), np_dtype(op.outputs[0])

    def step(v: Values) -> None:
        r = v[a].astype(F32, copy=False) @ weight_t
        if bias is not None:
            r += bias
        v[o] = r.astype(dtype, copy=False)

    return step


def _build_matmul(op: Any, ctx: OpContext) -> Step:
    tx, ty = bool(ctx.param(op, "transpose_x", False)), bool(ctx.param(op, "transpose_y", False))
    y_const = ctx.constant(op.y)
    if y_const is not None:
        y_const = y_const.astype(F32)
        if ty:
            y_const = np.ascontiguousarray(np.swapaxes(y_const, -1, -2))
        ty = False

    def kernel(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        y = y_const if y is None else y
        if tx:
            x = np.swapaxes(x, -1, -2)
        if ty:
            y = np.swapaxes(y, -1, -2)
        return np.matmul(x, y)

    return _float_op(op, ctx, kernel, ("x",) if y_const is not None else ("x", "y"))


def _conv_padding(op: Any, ctx: OpContext, spatial: tuple[int, ...], kernel: tuple[int, ...],
                  strides: tuple[int, ...], dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    pad_type = str(ctx.param(op, "pad_type", "valid"))
    if pad_type == "valid":
        return [(0, 0)] * len(spatial)
    if pad_type == "custom":
        pad = [int(p) for p in ctx.param(op, "pad")]
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(len(spatial))]
    if pad_type in ("same", "same_lower"):
        pads = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if pad_type == "same" else (large, small))
        return pads
    raise NotImplementedError(f"conv '{op.name}': pad_type '{pad_type}'")


def _build_conv(op: Any, ctx: OpContext) -> Step:
    weight = ctx.constant(op.weight)
    if weight is None:
        raise NotImplementedError(f"conv '{op.name}' has a non-constant weight")
    x_shape = static_shape(op.x)
    n_spatial = len(x_shape) - 2
    groups = int(ctx.param(op, "groups", 1))
    strides = tuple(int(s) for s in ctx.param(op, "strides", [1] * n_spatial))
    dilations = tuple(int(d) for d in ctx.param(op, "dilations", [1] * n_spatial))
    c_out, kernel = weight.shape[0], tuple(weight.shape[2:])
    pads = _conv_padding(op, ctx, x_shape[2:], kernel, strides, dilations)
    out_spatial = static_shape(op.outputs[0])[2:]
    # im2col by taps: one strided slice per kernel position, then one (grouped) matmul.
    taps = []
    for offsets in itertools.product(*[range(k) for k in kernel]):
        taps.append((slice(None), slice(None)) + tuple(
            slice(off * d, off * d + (n - 1) * s + 1, s)
            for off, d, s, n in zip(offsets, dilations, strides, out_spatial)))
    n_taps, cin_g = len(taps), x_shape[1] // groups
    weight_g = np.ascontiguousarray(weight.astype(F32).reshape(groups, c_out // groups, cin_g * n_taps))
    bias = ctx.constant(op.bias) if op.bias is not None else None
    bias = None if bias is None else bias.astype(F32).reshape((c_out,) + (1,) * n_spatial)
    padding = [(0, 0), (0, 0)] + pads
    needs_pad = any(p != (0, 0) for p in pads)
    batch, n_out = x_shape[0], int(np.prod(out_spatial))
    out_shape = (batch, c_out) + out_spatial

    def kernel_fn(x: np.ndarray) -> np.ndarray:
        if needs_pad:
            x = np.pad(x, padding)
        cols = np.stack([x[t] for t in taps], axis=2)  # [N, Cin, taps, *out]
        cols = cols.reshape(batch, groups, cin_g * n_taps, n_out)
        r = np.matmul(weight_g, cols).reshape(out_shape)
        if bias is not None:
            r += bias
        return r

    return _float_op(op, ctx, kernel_fn, ("x",))


# ---------------------------------------------------------------- normalization and reductions

def _build_softmax(op: Any, ctx: OpContext) -> Step:
    axis = int(ctx.param(op, "axis", -1))

    def kernel(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        e /= e.sum(axis=axis, keepdims=True)
        return e

    return _float_op(op, ctx, kernel, ("x",))


def _build_layer_norm(op: Any, ctx: OpContext) -> Step:
    rank = len(static_shape(op.x))
    axes = tuple(sorted(int(a) % rank for a in ctx.param(op, "axes")))
    eps = F32(ctx.param(op, "epsilon", 1e-5))
    shape = tuple(d if i in axes else 1 for i, d in enumerate(static_shape(op.x)))
    gamma, beta = ctx.param(op, "gamma"), ctx.param(op, "beta")
    gamma = None if gamma is None else gamma.astype(F32).reshape(shape)
    beta = None if beta is None else beta.astype(F32).reshape(shape)

    def kernel(x: np.ndarray) -> np.ndarray:
        centered = x - x.mean(axis=axes, keepdims=True)
        r = centered / np.sqrt((centered * centered).mean(axis=axes, keepdims=True) + eps)
        if gamma is not None:
            r *= gamma
        if beta is not None:
            r += beta
        return r

    return _float_op(op, ctx, kernel, ("x",))


def _reduce(fn: Callable[..., np.ndarray]) -> Callable[[Any, OpContext], Step]:
    def build(op: Any, ctx: OpContext) -> Step:
        axes = ctx.param(op, "axes")
        axes = None if axes is None else tuple(int(a) for a in np.atleast_1d(axes))
        keep = bool(ctx.param(op, "keep_dims", False))
        return _float_op(op, ctx, lambda x: np.asarray(fn(x, axis=axes, keepdims=keep)), ("x",))

    return build


OPS: dict[str, Callable[[Any, OpContext], Step]] = {
    # elementwise, numpy's own float16 loops round once per op
    "add": _binary(np.add), "sub": _binary(np.subtract), "mul": _binary(np.multiply),
    "real_div": _binary(np.divide), "pow": _binary(np.power),
    "maximum": _binary(np.maximum), "minimum": _binary(np.minimum),
    "equal": _binary(np.equal), "not_equal": _binary(np.not_equal),
    "less": _binary(np.less), "less_equal": _binary(np.less_equal),
    "greater": _binary(np.greater), "greater_equal": _binary(np.greater_equal),
    "logical_and": _binary(np.logical_and), "logical_or": _binary(np.logical_or),
    "abs": _unary(np.abs), "exp": _unary(np.exp), "sqrt": _unary(np.sqrt), "tanh": _unary(np.tanh),
    "square": _unary(np.square), "floor": _unary(np.floor), "ceil": _unary(np.ceil),
    "sign": _unary(np.sign), "sin": _unary(np.sin), "cos": _unary(np.cos),
    "relu": _unary(lambda x: np.maximum(x, x.dtype.type(0))),
    "identity": _build_identity, "cast": _build_cast,
    # composite float kernels
    "sigmoid": lambda op, ctx: _float_op(op, ctx, sigmoid32, ("x",)),
    "silu": lambda op, ctx: _float_op(op, ctx, lambda x: x * sigmoid32(x), ("x",)),
    "erf": lambda op, ctx: _float_op(op, ctx, _erf32, ("x",)),
    "softplus": lambda op, ctx: _float_op(op, ctx, lambda x: np.logaddexp(F32(0), x), ("x",)),
    "relu6": lambda op, ctx: _float_op(op, ctx, lambda x: np.clip(x, F32(0), F32(6)), ("x",)),
    "gelu": _build_gelu, "log": _build_log, "clip": _build_clip, "leaky_relu": _build_leaky_relu,
    "rsqrt": _build_eps_unary(lambda x, eps: F32(1) / np.sqrt(x + eps), 1e-12),
    "inverse": _build_eps_unary(lambda x, eps: F32(1) / (x + eps), 1e-4),
    # linear algebra, normalization, reductions
    "linear": _build_linear, "matmul": _build_matmul, "conv": _build_conv,
    "softmax": _build_softmax, "layer_norm": _build_layer_norm,
    "reduce_mean": _reduce(np.mean), "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max), "reduce_min": _reduce(np.min),
}
