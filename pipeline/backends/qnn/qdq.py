"""qnn-qdq: the simplified ONNX graph -> a QDQ graph for HTP (a8w8 or a16w8), calibrated on real (chunk, state) pairs.

`get_qnn_qdq_config` sets the overrides QNN needs (16-bit Sigmoid/Tanh encodings, per-tensor
MatMul weights, per-channel Conv weights when asked), `quantize_static` calibrates on the
calibrate stage's recorded pairs: min-max, or the percentile of each tensor's histogram (a recipe's
`calibration`; the recipe, searched or pinned, is recorded in the contract's `quantization`). A recipe's
higher-precision parts: in a8w8, 16-bit activation islands (states' recurrences, a PCM front end, single
nodes); in a16w8, single nodes' weights at 16 bits (symmetric int16: HTP runs them as a16w16). Then:

- the state-range guard: every state output must be able to represent the range its state input
  takes on real speech, since it is fed back as that input. onnxruntime's quantizer gives a tensor
  that feeds only a Relu the Relu's [0, max] range even when the tensor is also a graph output,
  which clamps a recurrent state at 0 on every call. Each state pair is therefore calibrated to
  the union of both tensors' recorded ranges (TensorQuantOverrides), which also gives the pair
  one encoding, so integer state feeds back as is; a state whose range is still short fails the
  stage, naming the tensor.
- state headroom: a state's range over speech calibration never heard outgrows the recorded
  one, and on HTP, unlike the other backends, it cannot stay float: a clipped state is fed back on
  every call. Measured on the verification split against the calibration's ranges: nightly lstm_ctc's
  cell state reaches 1.71x its calibrated range, the byo LSTMCell recognizer's 1.35x (on the DSP that
  clipping failed its state bound), dscnn's buffers 1.28x, the rest at most 1.1x. A 16-bit state pair's
  range (every pair in a16w8, a kept recurrence's in a8w8) is therefore widened by `state_headroom` on
  each side away from zero (2x: one bit of 16), and so is every value inside its recurrence (f*c, the c
  between a chunk's frames: measured, the DSP clipped there when only the pair was widened). 8-bit
  states keep their recorded range: no bit to spare.
- the integer boundary (boundary.py): graph I/O in HTP's integers, each encoding in the contract.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.backends.qnn.files import ARTIFACT, ENCODINGS_FILE, GUARD_FILE
from pipeline.cache import Artifact
from pipeline.contract import Binding, Quantization, read_contract, write_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import InternalError, ToolchainError, UserError
from pipeline.onnx_graph import frontend_nodes, recurrence_nodes
from pipeline.spec import StreamSpec
from pipeline.verify.records import RANGES_FILE, load_calibration
from pipeline.verify.state_guard import Encoded, output_problem, pair_record

PRECISIONS = {"a8w8": ("QUInt8", "QUInt8"), "a16w8": ("QUInt16", "QUInt8")}  # (activations, weights)
# onnxruntime's own default, written out so that a change of it is not a silent change of our files
PERCENTILE = 99.999


class QdqConfig(StageConfig):
    precision: Literal["a8w8", "a16w8"] = Field(description="a8w8: 8-bit activations and weights; a16w8: 16-bit activations, 8-bit weights.")
    variant: str = Field("", exclude=True, description="Variant name for messages (not part of the key).")
    per_channel: bool = Field(True, description="Per-channel weight scales where HTP takes them (Conv).")
    calibration_samples: int | None = Field(None, gt=0, description="Recorded pairs to calibrate on, evenly spaced; None: all.")
    state_range_overrides: bool = Field(
        True, description="Calibrate each state pair to the union of both tensors' ranges; off only to show the guard catching the trap."
    )
    sixteen_bit_states: tuple[str, ...] = Field(
        (), description="a8w8 only: state inputs whose recurrence (the path to the paired output and its readers) is quantized to 16 bits."
    )
    sixteen_bit: tuple[str, ...] = Field(
        (), description="a8w8 only: ONNX node names or graph inputs (or shell-style patterns of them) whose values are quantized to 16 bits."
    )
    sixteen_bit_frontends: tuple[str, ...] = Field(
        (),
        description="a8w8 only: chunk inputs (raw PCM) quantized to 16 bits with their front end (every op on a path to the "
        "spectrum's log; the log's own output stays 8-bit, which HTP needs: a 16-bit Log fails graph finalization).",
    )
    sixteen_bit_weights: tuple[str, ...] = Field(
        (),
        description="a16w8 only: ONNX node names (or shell-style patterns of them) whose weights are quantized to 16 bits "
        "(symmetric int16, per channel where the op takes it), so HTP runs those ops as a16w16; every other weight stays 8-bit.",
    )
    state_headroom: float = Field(
        2.0,
        ge=1.0,
        description="Each 16-bit state pair's recorded range (a16w8's, a8w8's sixteen_bit_states'), widened by this factor on "
        "each side away from zero (a state's range on unheard speech outgrows its calibration's, measured up to 1.71x); "
        "1: the recorded range.",
    )
    calibrate_method: Literal["minmax", "percentile"] = Field(
        "minmax",
        description=f"Activation ranges: each tensor's recorded min-max, or the {PERCENTILE} % two-sided percentile of its "
        "histogram (asymmetric); chunk inputs and state pairs keep their recorded min-max either way (the state-range guard).",
    )


# ops whose output onnxruntime's quantizer gives its input's encoding (an override on the output alone is ignored)
SHARED_ENCODING_OPS = {"Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Gather"}


def widened(low: float, high: float, headroom: float) -> tuple[float, float]:
    """A range widened by `headroom` on each side away from zero (a non-negative state stays non-negative)."""
    return (low * headroom if low < 0 else low), (high * headroom if high > 0 else high)


def path_ranges(source: Path, spec: StreamSpec, headroom: dict[str, float], feeds: list[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """The values inside each widened state's recurrence (f*c, the c between two frames of a chunk, ...: every
    element-wise or data-movement node on its path to the paired output), each with its range over the calibration
    feeds widened by the pair's headroom. The state is clipped wherever it is stored, not only at the graph's edge."""
    import onnx
    import onnxruntime as ort

    from pipeline.onnx_graph import recurrence_path

    model = onnx.load(str(source))
    pairs = {s.input: s.output for s in spec.states}
    graph_outputs = {o.name for o in model.graph.output}
    inside: dict[str, float] = {}
    for state_in, factor in headroom.items():
        for node in recurrence_path(list(model.graph.node), state_in, pairs[state_in]):
            inside |= {o: factor for o in node.output if o not in graph_outputs}
    if not inside:
        return {}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in inside)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named value
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = list(inside)
    low, high = np.full(len(names), np.inf), np.full(len(names), -np.inf)
    for feed in feeds:
        for k, value in enumerate(session.run(names, feed)):
            low[k], high[k] = min(low[k], float(value.min())), max(high[k], float(value.max()))
    return {name: widened(float(low[k]), float(high[k]), inside[name]) for k, name in enumerate(names)}


def with_state_ranges(
    overrides: dict[str, list[dict]],
    spec: StreamSpec,
    ranges: dict[str, dict],
    graph,
    headroom: dict[str, float] | None = None,
    inside: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Give each chunk input its recorded range and each state input and output the union of the pair's, widened
    by the pair's `headroom` (state input -> factor; absent: 1), and each value `inside` a widened recurrence its
    range (`path_ranges`), in `overrides` (TensorQuantOverrides).

    A state output made by data movement (a KV cache's `Slice(Concat(k_in, k))`) shares its producer's input
    encoding, so the range goes up the chain to the tensor whose encoding it shares."""
    producers = {o: n for n in graph.node for o in n.output}
    # chunk inputs too: the whole calibration stream's range, not the evenly spaced samples' (a loud PCM sample the
    # samples miss would clip, and with it the PCM context a state carries)
    groups = [((i.name,), i.name, 1.0) for i in spec.inputs] + [((s.input, s.output), s.output, (headroom or {}).get(s.input, 1.0)) for s in spec.states]
    given: set[str] = set()
    for pair, last, factor in groups:
        low, high = widened(min(ranges[n]["min"] for n in pair), max(ranges[n]["max"] for n in pair), factor)
        names, tensor = list(pair), last
        while tensor in producers and producers[tensor].op_type in SHARED_ENCODING_OPS:
            tensor = producers[tensor].input[0]
            names.append(tensor)
        for name in names:
            first, *rest = overrides.get(name) or [{}]
            if "scale" in first:  # an encoding QNN fixes (a 16-bit Sigmoid/Tanh output) already spans the op's whole range
                continue
            bounds = {"rmin": np.array(low, dtype=np.float32), "rmax": np.array(high, dtype=np.float32)}
            entry = {**first, **bounds}
            if "convert" in entry and "scale" not in entry["convert"]:
                # a state output made inside a 16-bit island leaves through the island's convert to 8 bits: that
                # encoding is the one fed back, so it gets the pair's range too
                entry["convert"] = {**entry["convert"], **bounds}
            overrides[name] = [entry, *rest]
            given.add(name)
    for name, (low, high) in (inside or {}).items():
        first, *rest = overrides.get(name) or [{}]
        if "scale" in first or name in given:
            continue
        overrides[name] = [{**first, "rmin": np.array(low, dtype=np.float32), "rmax": np.array(high, dtype=np.float32)}, *rest]


def check_state_ranges(spec: StreamSpec, encodings: dict[str, Quantization], ranges: dict[str, dict], variant: str, where: str) -> dict:
    """Each state output must represent the range of the state input it becomes (within one step); fail naming it.

    The comparison and the message are the shared guard's (pipeline/verify/state_guard.py); QNN's integer
    boundary makes the encoding of the graph output the one to check, and a short one is the quantizer's doing."""
    report, problems = {}, []
    for s in spec.states:
        need = (ranges[s.input]["min"], ranges[s.input]["max"])
        q = encodings[s.output]
        report[s.output] = pair_record(s, need, q) | {"same_encoding_as_input": encodings[s.input] == q}
        if not report[s.output]["covered"]:
            problems.append(output_problem(s, need, Encoded(s.output, q)))
    if problems:
        raise ToolchainError(
            "; ".join(problems) + ": every call would clamp the state (a tensor read only by a Relu/Clip is given that "
            "op's range); its range must cover the state input's (TensorQuantOverrides rmin/rmax)",
            tool="onnxruntime",
            stage=where,
            variant=variant,
        )
    return report


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over the recorded (chunk, state) pairs."""

    def __init__(self, recorded: dict[str, np.ndarray], names: list[str], limit: int | None) -> None:
        count = len(recorded[names[0]])
        keep = np.unique(np.linspace(0, count - 1, min(limit or count, count)).round().astype(int))
        self._feeds = iter([{n: recorded[n][k].astype(np.float32) for n in names} for k in keep])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def sixteen_bit_tensors(graph, patterns: tuple[str, ...], variant: str) -> list[str]:
    """Outputs of the nodes, and the graph inputs, each pattern names (shell-style: exporters number nodes by graph
    size); a pattern matching nothing fails, listing what there is."""
    from fnmatch import fnmatchcase

    initializers = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    found: dict[str, None] = {}
    for pattern in patterns:
        hits = [o for n in graph.node if fnmatchcase(n.name, pattern) for o in n.output] + [i for i in inputs if fnmatchcase(i, pattern)]
        if not hits:
            names = [n.name for n in graph.node]
            shown = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "")
            raise UserError(
                f"{variant}: qnn.sixteen_bit names {pattern!r}, which matches no ONNX node or graph input of the model; "
                f"graph inputs: {', '.join(inputs)}; nodes: {shown}"
            )
        found.update(dict.fromkeys(hits))
    return list(found)


WEIGHTED_OPS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (0, 1)}  # the inputs a weight can be
CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1}  # where QNN takes per-channel weights (never MatMul or Gemm)


def weighted_nodes(graph) -> dict[str, tuple[str, str]]:
    """Node name -> (its weight initializer, its op type), for the ops that take a float weight of at least 2 dimensions."""
    initializers = {t.name: t for t in graph.initializer}
    found = {}
    for n in graph.node:
        for k in WEIGHTED_OPS.get(n.op_type, ()):
            weight = initializers.get(n.input[k]) if k < len(n.input) else None
            if weight is not None and len(weight.dims) >= 2 and weight.data_type == 1:  # TensorProto.FLOAT
                found[n.name] = (weight.name, n.op_type)
                break
    return found


def sixteen_bit_weights(graph, patterns: tuple[str, ...], variant: str) -> dict[str, str]:
    """The weight initializers (-> their op type) of the nodes each pattern names; a pattern matching no weighted node
    fails, listing them."""
    from fnmatch import fnmatchcase

    weighted = weighted_nodes(graph)
    found: dict[str, str] = {}
    for pattern in patterns:
        hits = {w: op for name, (w, op) in weighted.items() if fnmatchcase(name, pattern)}
        if not hits:
            raise UserError(
                f"{variant}: qnn.sixteen_bit_weights names {pattern!r}, which matches no ONNX node with a weight "
                f"({', '.join(sorted(WEIGHTED_OPS))}); nodes with weights: {', '.join(weighted) or 'none'}"
            )
        found |= hits
    return found


def quantize(source: Path, output: Path, spec: StreamSpec, ranges: dict[str, dict], recorded: dict[str, np.ndarray], config: QdqConfig) -> None:
    """Quantize a private copy of `source`: onnxruntime writes `<model>-inferred.onnx` beside the model it quantizes
    and deletes it, so two stages quantizing one cached graph at once (a search and a qdq, with --jobs 2) would
    delete each other's file (measured: FileNotFoundError in the byo LSTMCell's DSP build) and write into the cache."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qnn-qdq-") as private:
        copy = Path(private) / source.name
        shutil.copyfile(source, copy)
        _quantize(copy, output, spec, ranges, recorded, config)


def _quantize(source: Path, output: Path, spec: StreamSpec, ranges: dict[str, dict], recorded: dict[str, np.ndarray], config: QdqConfig) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize_static
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    activations, weights = (getattr(QuantType, t) for t in PRECISIONS[config.precision])
    graph = onnx.load(str(source)).graph
    sixteen_bit: dict[str, list[dict]] = {}
    if config.sixteen_bit_states or config.sixteen_bit or config.sixteen_bit_frontends:
        # a 16-bit island in an 8-bit graph: HTP runs mixed precision, get_qnn_qdq_config adds the conversions
        kept = set(recurrence_nodes(source, spec, config.sixteen_bit_states, config.variant, "qnn-qdq")) if config.sixteen_bit_states else set()
        tensors = [o for n in graph.node if n.name in kept for o in n.output] + list(config.sixteen_bit_states)
        tensors += sixteen_bit_tensors(graph, config.sixteen_bit, config.variant)
        if config.sixteen_bit_frontends:
            front = set(frontend_nodes(source, config.sixteen_bit_frontends, config.variant, "qnn-qdq", include_log=False))
            tensors += [o for n in graph.node if n.name in front for o in n.output] + list(config.sixteen_bit_frontends)
        sixteen_bit = {name: [{"quant_type": QuantType.QUInt16}] for name in tensors}
    reader = _Reader(recorded, spec.input_names, config.calibration_samples)
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[config.calibrate_method]
    qnn = get_qnn_qdq_config(
        str(source), reader, calibrate_method=method, activation_type=activations, weight_type=weights,
        per_channel=config.per_channel, init_overrides=sixteen_bit or None,
    )  # fmt: skip
    if config.calibrate_method == "percentile":
        # onnxruntime's percentile calibrator is symmetric by default, which wastes half of an unsigned grid on a
        # non-negative tensor (a Relu's, a Sigmoid's); asymmetric keeps min-max's zero point placement
        qnn.extra_options |= {"CalibPercentile": PERCENTILE, "CalibTensorRangeSymmetric": False}
    for weight, op in sixteen_bit_weights(graph, config.sixteen_bit_weights, config.variant).items():
        # an override on the initializer: symmetric int16 (HTP's 16-bit weights); an override without an axis would
        # make it per-tensor, so a Conv's keeps its per-channel scales where the rest have them
        first, *rest = qnn.extra_options["TensorQuantOverrides"].get(weight) or [{}]
        entry = {**first, "quant_type": QuantType.QInt16, "symmetric": True}
        if config.per_channel and op in CHANNEL_AXIS:
            entry.setdefault("axis", CHANNEL_AXIS[op])
        qnn.extra_options["TensorQuantOverrides"][weight] = [entry, *rest]
    # the ranges go in after the mixed-precision fixer has typed every tensor (it rejects a range-only entry it must retype)
    if config.state_range_overrides:
        headroom = state_headroom(config, spec)
        inside = path_ranges(source, spec, headroom, list(_Reader(recorded, spec.input_names, config.calibration_samples))) if headroom else {}
        with_state_ranges(qnn.extra_options["TensorQuantOverrides"], spec, ranges, graph, headroom, inside)
    quantize_static(
        str(source),
        str(output),
        qnn.calibration_data_reader,
        calibrate_method=qnn.calibrate_method,
        activation_type=qnn.activation_type,
        weight_type=qnn.weight_type,
        op_types_to_quantize=qnn.op_types_to_quantize,
        nodes_to_exclude=qnn.nodes_to_exclude,
        per_channel=qnn.per_channel,
        use_external_data_format=False,
        extra_options=qnn.extra_options,
        calibration_providers=["CPUExecutionProvider"],
    )


def state_headroom(config: QdqConfig, spec: StreamSpec) -> dict[str, float]:
    """State input -> the factor its pair's range is widened by: the 16-bit pairs (a16w8's, a8w8's kept recurrences)."""
    if config.state_headroom == 1.0:
        return {}
    return {s.input: config.state_headroom for s in spec.states if config.precision == "a16w8" or s.input in config.sixteen_bit_states}


class QdqStage(Stage):
    name = "qnn-qdq"
    version = "10"  # 9: headroom on 16-bit state pairs; 10: and on the values inside their recurrence
    tools = ("onnx", "onnxruntime")
    Config = QdqConfig

    @classmethod
    def run(cls, config: QdqConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        import onnx

        from pipeline.backends.qnn.boundary import encodings_of, integer_boundary
        from pipeline.backends import get_backend  # its quantizer, which builds candidates with this stage
        from pipeline.quant.quantizer import with_recipe

        source = inputs["model"].path
        contract = read_contract(source)
        spec = contract.stream
        variant = config.variant or f"qnn-{config.precision}"
        config, recipe = with_recipe(get_backend("qnn").load_quantizer(), config, inputs, config.precision)
        if (config.sixteen_bit_states or config.sixteen_bit or config.sixteen_bit_frontends) and config.precision != "a8w8":
            raise UserError(f"{variant}: sixteen_bit(_states) applies to a8w8 (a16w8 quantizes every activation to 16 bits)", where=ctx.node_id)
        if config.sixteen_bit_weights and config.precision != "a16w8":
            raise UserError(
                f"{variant}: sixteen_bit_weights applies to a16w8 (HTP runs 16-bit weights with 16-bit activations)", where=ctx.node_id
            )
        if "calibration" not in inputs:
            raise InternalError(f"{variant}: a qnn-qdq node was planned without a calibration input")
        calibration = inputs["calibration"].path
        ranges = json.loads((calibration / RANGES_FILE).read_text())["ranges"]
        quantize(source / contract.artifact, out / ARTIFACT, spec, ranges, load_calibration(calibration), config)

        model = onnx.load(str(out / ARTIFACT))
        activation_dtype = "uint16" if config.precision == "a16w8" else "uint8"
        states = {s.input: s.output for s in spec.states}
        # graph inputs among them: the rest are node names
        sixteen = (*config.sixteen_bit_states, *config.sixteen_bit, *config.sixteen_bit_frontends)
        boundary = integer_boundary(model, ranges, activation_dtype, states, dict.fromkeys(sixteen, "uint16"))
        guard = check_state_ranges(spec, boundary, ranges, variant, ctx.node_id)
        onnx.save(model, str(out / ARTIFACT))
        encodings = encodings_of(model)
        (out / ENCODINGS_FILE).write_text(json.dumps(encodings, indent=1) + "\n")
        (out / GUARD_FILE).write_text(json.dumps(guard, indent=1) + "\n")

        shapes = {i.name: i.shape for i in spec.inputs} | {o.name: o.shape for o in spec.outputs}
        shapes |= {s.input: s.shape for s in spec.states} | {s.output: s.shape for s in spec.states}
        bindings = {
            name: Binding(name=name, shape=tuple(shapes[name]), dtype=boundary[name].dtype, quantization=boundary[name])
            for name in (*spec.input_names, *spec.output_names)
        }
        headroom = state_headroom(config, spec) if config.state_range_overrides else {}
        if headroom:
            recipe["state_headroom"] = headroom
        update = {"backend": "qnn", "precision": config.precision, "artifact": ARTIFACT, "bindings": bindings, "quantization": recipe}
        write_contract(out, contract.model_copy(update=update))
        constants = sum(1 for e in encodings.values() if e["kind"] == "constant")
        shared = sum(1 for g in guard.values() if g["same_encoding_as_input"])
        ctx.log(
            f"{variant}: {len(encodings) - constants} activation and {constants} constant (weight, bias) encodings; "
            f"{shared} of {len(guard)} state pairs share one encoding (integer state feeds back as is)"
        )
