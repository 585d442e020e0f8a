"""The MIL `lstm` op, which TorchScript conversions of `nn.LSTM` produce (torch.export decomposes it instead).

The whole sequence is computed in float32 and the three results rounded to the op's
output dtype, like every other composite kernel here.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from pipeline.backends.coreml.mil_ops import F32, OpContext, Step, Values, sigmoid32, np_dtype, out_slot

ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": sigmoid32, "tanh": np.tanh, "relu": lambda x: np.maximum(x, F32(0)), "linear": lambda x: x,
}


def _activation(op: Any, ctx: OpContext, name: str, default: str) -> Callable[[np.ndarray], np.ndarray]:
    kind = str(ctx.param(op, name, default))
    if kind not in ACTIVATIONS:
        raise NotImplementedError(f"{name}='{kind}' (implemented: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[kind]


def _direction_weights(op: Any, ctx: OpContext, suffix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    weight_ih = ctx.param(op, "weight_ih" + suffix).astype(F32)
    weight_hh = ctx.param(op, "weight_hh" + suffix).astype(F32)
    bias = ctx.param(op, "bias" + suffix)
    bias = np.zeros(weight_ih.shape[0], F32) if bias is None else bias.astype(F32)
    peephole = ctx.param(op, "peephole" + suffix)
    if peephole is not None and np.any(peephole):
        raise NotImplementedError("peephole weights")
    return np.ascontiguousarray(weight_ih.T), np.ascontiguousarray(weight_hh.T), bias


def _build_lstm(op: Any, ctx: OpContext) -> Step:
    direction = str(ctx.param(op, "direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise NotImplementedError(f"direction '{direction}'")
    if ctx.param(op, "clip") is not None:
        raise NotImplementedError("clip")
    gate_fn = _activation(op, ctx, "recurrent_activation", "sigmoid")
    cell_fn = _activation(op, ctx, "cell_activation", "tanh")
    out_fn = _activation(op, ctx, "activation", "tanh")
    output_sequence = bool(ctx.param(op, "output_sequence", False))
    passes = [(_direction_weights(op, ctx, ""), direction == "reverse")]
    if direction == "bidirectional":
        passes.append((_direction_weights(op, ctx, "_back"), True))
    hidden = passes[0][0][1].shape[0]
    x, h0, c0 = ctx.slot(op.x), ctx.slot(op.initial_h), ctx.slot(op.initial_c)
    outs = [out_slot(op, ctx, i) for i in range(3)]
    dtypes = [np_dtype(var) for var in op.outputs]

    def run_direction(xs: np.ndarray, h: np.ndarray, c: np.ndarray, weights: tuple, backwards: bool):
        weight_ih_t, weight_hh_t, bias = weights
        projected = xs @ weight_ih_t + bias  # [s, b, 4H], all steps at once
        steps = range(len(xs) - 1, -1, -1) if backwards else range(len(xs))
        sequence = np.empty(xs.shape[:2] + (hidden,), F32)
        for t in steps:
            gates = projected[t] + h @ weight_hh_t  # order: input, forget, output, cell
            i, f, o = gate_fn(gates[:, :hidden]), gate_fn(gates[:, hidden:2 * hidden]), gate_fn(gates[:, 2 * hidden:3 * hidden])
            c = f * c + i * cell_fn(gates[:, 3 * hidden:])
            h = o * out_fn(c)
            sequence[t] = h
        return sequence, h, c

    def step(v: Values) -> None:
        xs, h_all, c_all = (v[s].astype(F32, copy=False) for s in (x, h0, c0))
        results = [run_direction(xs, h_all[:, k * hidden:(k + 1) * hidden], c_all[:, k * hidden:(k + 1) * hidden],
                                 weights, backwards) for k, (weights, backwards) in enumerate(passes)]
        sequence = np.concatenate([r[0] for r in results], axis=-1)
        if not output_sequence:
            last = [r[1] for r in results]  # each direction's final state: t = s-1 forward, t = 0 backward
            sequence = np.concatenate(last, axis=-1)[None]
        values = (sequence, np.concatenate([r[1] for r in results], -1), np.concatenate([r[2] for r in results], -1))
        for slot, value, dtype in zip(outs, values, dtypes):
            v[slot] = value.astype(dtype, copy=False)

    return step


OPS: dict[str, Callable[[Any, OpContext], Step]] = {"lstm": _build_lstm}
