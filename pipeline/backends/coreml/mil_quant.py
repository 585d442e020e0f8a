"""Quantization in MIL: iOS17 activation `quantize`/`dequantize`, and compressed weights.

Compressed weights (`constexpr_*` ops) are decompressed once, at load, into the dtype of
their scale or LUT (fp16 in an fp16 program), as Core ML does when it loads the model.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from pipeline.backends.coreml.mil_ops import F32, OpContext, Step, Values, np_dtype, out_slot, static_shape


# ---------------------------------------------------------------- activation quantization (iOS17)

def _axis_shape(rank: int, axis: int | None, size: int) -> tuple[int, ...]:
    if axis is None:
        return ()
    shape = [1] * rank
    shape[axis % rank] = size
    return tuple(shape)


def _quant_params(op: Any, ctx: OpContext) -> tuple[np.ndarray, np.ndarray]:
    rank = len(static_shape(op.input))
    axis = ctx.param(op, "axis")
    scale = np.asarray(ctx.param(op, "scale"), dtype=F32)
    zero_point = ctx.param(op, "zero_point")
    zero_point = np.zeros_like(scale) if zero_point is None else np.asarray(zero_point, dtype=F32)
    shape = _axis_shape(rank, None if axis is None else int(axis), scale.size) if scale.ndim else ()
    return scale.reshape(shape), zero_point.reshape(shape)


def _build_quantize(op: Any, ctx: OpContext) -> Step:
    scale, zero_point = _quant_params(op, ctx)
    dtype = np_dtype(op.outputs[0])
    lo, hi = F32(np.iinfo(dtype).min), F32(np.iinfo(dtype).max)
    a, o = ctx.slot(op.input), out_slot(op, ctx)

    symmetric = not np.any(zero_point)

    def step(v: Values) -> None:
        q = np.rint(v[a].astype(F32) / scale)  # rint: round half to even, as Core ML does
        if not symmetric:
            q += zero_point
        v[o] = np.clip(q, lo, hi, out=q).astype(dtype)

    return step


def _build_dequantize(op: Any, ctx: OpContext) -> Step:
    scale, zero_point = _quant_params(op, ctx)
    dtype = np_dtype(op.outputs[0])
    a, o = ctx.slot(op.input), out_slot(op, ctx)

    symmetric = not np.any(zero_point)

    def step(v: Values) -> None:
        q = v[a].astype(F32)
        if not symmetric:
            q -= zero_point
        q *= scale
        v[o] = q.astype(dtype, copy=False)

    return step


# ---------------------------------------------------------------- constexpr weights (decompressed once, at load)

def _per_axis(values: np.ndarray, rank: int, axis: int) -> np.ndarray:
    return values.reshape(_axis_shape(rank, axis, values.size)) if values.ndim else values


def _affine_dequantize(op: Any, ctx: OpContext) -> np.ndarray:
    data = ctx.param(op, "quantized_data")
    axis = int(ctx.param(op, "axis"))
    scale = ctx.param(op, "scale")
    zero_point = _per_axis(ctx.param(op, "zero_point").astype(F32), data.ndim, axis)
    dequantized = (data.astype(F32) - zero_point) * _per_axis(scale.astype(F32), data.ndim, axis)
    return dequantized.astype(scale.dtype)


def _repeat_blocks(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    for axis, (full, blocks) in enumerate(zip(shape, values.shape)):
        if full != blocks:
            values = np.repeat(values, full // blocks, axis=axis)
    return values


def _blockwise_shift_scale(op: Any, ctx: OpContext) -> np.ndarray:
    data, scale, offset = ctx.param(op, "data"), ctx.param(op, "scale"), ctx.param(op, "offset")
    r = data.astype(F32)
    if offset is not None:
        r = r - _repeat_blocks(offset.astype(F32), data.shape)
    return (r * _repeat_blocks(scale.astype(F32), data.shape)).astype(scale.dtype)


def _unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    bits = np.unpackbits(packed.astype(np.uint8), bitorder="little")[: count * nbits]
    return (bits.reshape(count, nbits).astype(np.int64) << np.arange(nbits)).sum(axis=1)


def _lut_to_dense(op: Any, ctx: OpContext) -> np.ndarray:
    lut = ctx.param(op, "lut")
    if "shape" in op.inputs:  # iOS16: one flat LUT, indices bit-packed into uint8
        shape = tuple(int(d) for d in ctx.param(op, "shape"))
        nbits = int(np.log2(lut.size))
        return lut[_unpack_bits(ctx.param(op, "indices"), nbits, int(np.prod(shape)))].reshape(shape)
    indices = ctx.param(op, "indices").astype(np.int64)  # iOS18: per-block LUTs [*blocks, palette, vector]
    if lut.shape[-1] != 1:
        raise NotImplementedError(f"constexpr_lut_to_dense '{op.name}': vector LUTs (vector size {lut.shape[-1]})")
    table = _repeat_blocks(lut[..., 0], indices.shape + (lut.shape[-2],))
    return np.take_along_axis(table, indices[..., None], axis=-1)[..., 0]


def _constexpr_cast(op: Any, ctx: OpContext) -> np.ndarray:
    return ctx.param(op, "source_val").astype(np_dtype(op.outputs[0]))


CONSTEXPR: dict[str, Callable[[Any, OpContext], np.ndarray]] = {
    "constexpr_affine_dequantize": _affine_dequantize,
    "constexpr_blockwise_shift_scale": _blockwise_shift_scale,
    "constexpr_lut_to_dense": _lut_to_dense,
    "constexpr_cast": _constexpr_cast,
}


OPS: dict[str, Callable[[Any, OpContext], Step]] = {
    "quantize": _build_quantize, "dequantize": _build_dequantize,
}
