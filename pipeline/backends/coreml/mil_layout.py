"""MIL ops that only move data (layout, slicing, joining) and the iOS18 state ops.

Values keep their dtype: nothing here rounds. See `mil_ops` for how steps are built.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from pipeline.backends.coreml.mil_ops import OpContext, Step, Values, out_slot, static_shape


# ---------------------------------------------------------------- layout

def _build_reshape_like(op: Any, ctx: OpContext) -> Step:
    # reshape / expand_dims / squeeze: the output type already holds the static shape.
    a, o, shape = ctx.slot(op.x), out_slot(op, ctx), static_shape(op.outputs[0])

    def step(v: Values) -> None:
        v[o] = v[a].reshape(shape)

    return step


def _build_transpose(op: Any, ctx: OpContext) -> Step:
    a, o, perm = ctx.slot(op.x), out_slot(op, ctx), tuple(int(p) for p in ctx.param(op, "perm"))

    def step(v: Values) -> None:
        v[o] = v[a].transpose(perm)

    return step


def _slices(op: Any, ctx: OpContext, x_shape: tuple[int, ...]) -> tuple:
    """The numpy index of a MIL slice (begin/end/stride with masks), resolved once at load."""
    rank = len(x_shape)
    begin = [int(b) for b in ctx.param(op, "begin")]
    end = [int(e) for e in ctx.param(op, "end")]
    stride = [int(s) for s in ctx.param(op, "stride", [1] * rank)]
    begin_mask = ctx.param(op, "begin_mask", [False] * rank)
    end_mask = ctx.param(op, "end_mask", [False] * rank)
    squeeze_mask = ctx.param(op, "squeeze_mask", [False] * rank)
    index: list = []
    for i in range(rank):
        if squeeze_mask[i]:
            index.append(begin[i] % x_shape[i])  # pure index: the axis goes away
            continue
        index.append(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], stride[i]))
    return tuple(index)


def _build_slice_by_index(op: Any, ctx: OpContext) -> Step:
    index = _slices(op, ctx, static_shape(op.x))
    a, o = ctx.slot(op.x), out_slot(op, ctx)

    def step(v: Values) -> None:
        v[o] = v[a][index]

    return step


def _build_slice_update(op: Any, ctx: OpContext) -> Step:
    index = _slices(op, ctx, static_shape(op.x))
    a, u, o = ctx.slot(op.x), ctx.slot(op.update), out_slot(op, ctx)
    target_shape = np.empty(static_shape(op.x), dtype=np.bool_)[index].shape

    def step(v: Values) -> None:
        r = v[a].copy()
        r[index] = v[u].reshape(target_shape)
        v[o] = r

    return step


def _build_concat(op: Any, ctx: OpContext) -> Step:
    ins = [ctx.slot(x) for x in op.values]
    axis, o = int(ctx.param(op, "axis")), out_slot(op, ctx)
    out_shape = static_shape(op.outputs[0])
    if bool(ctx.param(op, "interleave", False)):
        rank = len(out_shape)
        stack_axis = axis % rank + 1

        def step(v: Values) -> None:
            v[o] = np.stack([v[i] for i in ins], axis=stack_axis).reshape(out_shape)

    else:

        def step(v: Values) -> None:
            v[o] = np.concatenate([v[i] for i in ins], axis=axis)

    return step


def _build_stack(op: Any, ctx: OpContext) -> Step:
    ins, axis, o = [ctx.slot(x) for x in op.values], int(ctx.param(op, "axis")), out_slot(op, ctx)

    def step(v: Values) -> None:
        v[o] = np.stack([v[i] for i in ins], axis=axis)

    return step


def _build_split(op: Any, ctx: OpContext) -> Step:
    axis = int(ctx.param(op, "axis")) % len(static_shape(op.x))
    sizes = [static_shape(out)[axis] for out in op.outputs]
    bounds = np.cumsum(sizes)[:-1].tolist()
    a, outs = ctx.slot(op.x), [ctx.slot(out) for out in op.outputs]

    def step(v: Values) -> None:
        for o, part in zip(outs, np.split(v[a], bounds, axis=axis)):
            v[o] = part

    return step


def _build_pad(op: Any, ctx: OpContext) -> Step:
    mode = str(ctx.param(op, "mode", "constant"))
    pad = [int(p) for p in ctx.param(op, "pad")]
    rank = len(static_shape(op.x))
    pairs = [(0, 0)] * (rank - len(pad) // 2) + [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]
    value = ctx.param(op, "constant_val", 0.0)
    np_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}.get(mode)
    if np_mode is None:
        raise NotImplementedError(f"pad '{op.name}': mode '{mode}'")
    a, o = ctx.slot(op.x), out_slot(op, ctx)
    kwargs = {"constant_values": value} if np_mode == "constant" else {}

    def step(v: Values) -> None:
        v[o] = np.pad(v[a], pairs, mode=np_mode, **kwargs)

    return step


def _build_tile(op: Any, ctx: OpContext) -> Step:
    # torch's expand / repeat
    reps = tuple(int(r) for r in ctx.param(op, "reps"))
    a, o = ctx.slot(op.x), out_slot(op, ctx)

    def step(v: Values) -> None:
        v[o] = np.tile(v[a], reps)

    return step


def _build_gather(op: Any, ctx: OpContext) -> Step:
    # index_select / embedding lookups; negative indices count from the end, as in MIL
    axis = int(ctx.param(op, "axis", 0)) % len(static_shape(op.x))
    batch_dims = int(ctx.param(op, "batch_dims", 0))
    if batch_dims:
        raise NotImplementedError(f"gather '{op.name}': batch_dims={batch_dims}")
    a, i, o = ctx.slot(op.x), ctx.slot(op.indices), out_slot(op, ctx)

    def step(v: Values) -> None:
        v[o] = np.take(v[a], v[i].astype(np.int64), axis=axis)

    return step


# ---------------------------------------------------------------- iOS18 states

def _build_read_state(op: Any, ctx: OpContext) -> Step:
    s, o = ctx.slot(op.input), out_slot(op, ctx)

    def step(v: Values) -> None:
        v[o] = v[s].copy()

    return step


def _build_update_state(op: Any, ctx: OpContext) -> Step:
    s, x, o = ctx.slot(op.state), ctx.slot(op.value), out_slot(op, ctx)

    def step(v: Values) -> None:
        np.copyto(v[s], v[x])  # in place: the caller's state buffer carries over to the next call
        v[o] = v[x]

    return step


OPS: dict[str, Callable[[Any, OpContext], Step]] = {
    "reshape": _build_reshape_like, "expand_dims": _build_reshape_like, "squeeze": _build_reshape_like,
    "transpose": _build_transpose, "slice_by_index": _build_slice_by_index, "slice_update": _build_slice_update,
    "concat": _build_concat, "stack": _build_stack, "split": _build_split, "pad": _build_pad,
    "tile": _build_tile, "gather": _build_gather,
    "read_state": _build_read_state, "coreml_update_state": _build_update_state,
}
