"""8-bit activation quantization of a Core ML model, calibrated without `predict()`.

coremltools' `linear_quantize_activations` (9.0) calibrates by running `MLModel.predict`,
which needs macOS. Its calibration is one internal function,
`coremltools.optimize.coreml.experimental._post_training_quantization.
_get_activation_calibration_stats(fpmodel, sample_data, calibration_op_group_size)`,
which returns `{tensor_name: {"rmin": min, "rmax": max}}` for the function inputs and
every non-const op output (model outputs excluded), with the tensors around each
`concat` widened to one shared range (`_adjust_concat_surrounding_activation_stats`).
The statistics then feed the graph passes `compression::insert_prefix_quantize_dequantize_pair`,
`compression::insert_suffix_quantize_dequantize_pair` and
`common::dequantize_quantize_pair_elimination` (option `activation_stats`).

`quantize_activations` builds the same statistics from ranges measured by our MIL
interpreter (`interpreter.activation_ranges`) and runs coremltools' own
`linear_quantize_activations` with the calibration function replaced by one that
returns them, so the inserted quantize/dequantize ops, their placement and their
scales are exactly coremltools'. Relied on, in coremltools 9.0:
`_post_training_quantization._get_activation_calibration_stats` (the name the public
function calls), `experimental._model_debugger.ModelDebugger` (which tensors coremltools
calibrates, concat groups) and `experimental._post_training_quantization.
_adjust_concat_surrounding_activation_stats`.

Two deliberate differences. coremltools 9.0's range update overwrites each tensor's
min/max with the latest sample's (`_update_tensor_range` assigns before it compares),
so only the last calibration sample counts there; our ranges span every sample. And
model outputs get a range too (see `calibration_stats`).

coremltools 9.0 quantizes activations of fp16 programs only: on an fp32 program its
suffix pass builds fp16 scales for fp32 tensors and fails ("scale has dtype fp16 whereas
input has dtype fp32"). Convert with compute_precision=FLOAT16 first. And its suffix pass
cannot re-create an op whose output is a model output also read inside the model (a
state output `h_out = add(...)` feeding the head): leave such ops in float through
`op_name_configs` (the error raised here names them).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from unittest import mock


def calibration_stats(mlmodel: Any, ranges: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    """coremltools' activation-statistics dict for `mlmodel`, filled from measured `ranges`."""
    import coremltools as ct
    from coremltools.optimize.coreml.experimental import _post_training_quantization as calibration
    from coremltools.optimize.coreml.experimental._model_debugger import ModelDebugger

    spec = mlmodel.get_spec()
    debugger = ModelDebugger(mlmodel)
    model_outputs = {output.name for output in spec.description.output}
    float_types = (ct.proto.MIL_pb2.DataType.FLOAT16, ct.proto.MIL_pb2.DataType.FLOAT32)
    operations = debugger.block_info.operations
    wanted = [i.name for i in spec.description.input]
    wanted += [
        name for name in debugger.get_intermediate_output_names(lambda op: op.spec.type != "const")
        if name not in model_outputs and operations[name].outputs[name].type.tensorType.dataType in float_types
    ]
    missing = [name for name in wanted if name not in ranges]
    if missing:
        raise KeyError(
            f"activation ranges lack {len(missing)} tensor(s) coremltools calibrates, e.g. {missing[:5]}: "
            "measure them with activation_ranges(MilInterpreter(<this model's .mlpackage>), samples)"
        )
    stats: dict[str, dict[str, float]] = defaultdict(dict)  # a defaultdict, as coremltools builds it
    for name in wanted:
        low, high = ranges[name]
        stats[name]["rmin"], stats[name]["rmax"] = float(low), float(high)
    calibration._adjust_concat_surrounding_activation_stats(debugger._get_concat_op_info(), stats)
    # coremltools never records model outputs, so its own passes fail (KeyError 'rmin') when an
    # output comes from an op they quantize, e.g. a state output `h_out = add(...)`. Added after the
    # concat adjustment, and only ever read in that case, so where coremltools succeeds nothing changes.
    for name in model_outputs & set(ranges):
        if name not in stats:
            stats[name]["rmin"], stats[name]["rmax"] = float(ranges[name][0]), float(ranges[name][1])
    return stats


def quantize_activations(mlmodel: Any, ranges: dict[str, tuple[float, float]], config: Any) -> Any:
    """`ct.optimize.coreml.linear_quantize_activations(mlmodel, config, ...)` with `ranges` as its calibration.

    `mlmodel` is the float ML Program (not yet activation-quantized) the ranges were measured
    on; `config` is an `OptimizationConfig` of `OpLinearQuantizerConfig` (e.g. mode
    "linear_symmetric", dtype int8). Returns a new MLModel with quantize/dequantize pairs.
    """
    from coremltools.optimize.coreml import _post_training_quantization as post_training

    seam = "_get_activation_calibration_stats"
    if not hasattr(post_training, seam):
        import coremltools as ct

        raise RuntimeError(
            f"coremltools {ct.__version__} has no optimize.coreml._post_training_quantization.{seam}; "
            "pipeline/backends/coreml/activations.py was written against coremltools 9.0"
        )
    stats = calibration_stats(mlmodel, ranges)

    def measured_by_interpreter(fpmodel: Any, sample_data: list, calibration_op_group_size: int = -1) -> dict:
        return stats

    with mock.patch.object(post_training, seam, measured_by_interpreter):
        try:
            return post_training.linear_quantize_activations(mlmodel, config, sample_data=[])
        except ValueError as error:
            if "that's block" not in str(error):
                raise
            from pipeline.backends.coreml.interpreter import load_program

            names = outputs_read_inside(load_program(mlmodel.package_path))
            raise ValueError(
                f"coremltools cannot quantize the output of an op whose result is both a model output and used "
                f"inside the model ({error}); leave such ops in float with "
                f"OptimizationConfig(..., op_name_configs={{name: None for name in {names}}})"
            ) from error


def outputs_read_inside(program: Any) -> list[str]:
    """Names of ops whose output is a model output that other ops also read (e.g. a state `h_out`)."""
    main = program.functions["main"]
    return sorted(var.op.name for var in main.outputs if var.op is not None and var.child_ops)
