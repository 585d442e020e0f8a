"""coreml: one `.mlpackage` ML Program at one precision, from the trace stage's captured graph.

- fp32, fp16: compute precisions of the conversion itself (float32 I/O either way);
- int8w: the fp16 model with its weights linearly quantized to int8 (`linear_quantize_weights`);
- w8a8: activations quantized to int8 too, their ranges measured on the calibrate stage's recorded
  (chunk, state) pairs by the MIL interpreter (coremltools' calibration calls `predict`, which
  needs macOS), then the weights;
- stateful: fp16, the recurrent state in the model (iOS 18), so the app keeps no state tensors.

Then the contract (names read back from the saved model's description), the op listing, for int8w
and w8a8 the state-range guard (each state output's and each state input's activation quantization
must hold the state input's recorded range, `guard.json`; see pipeline/verify/state_guard.py), and a
check that the saved package, run by this backend's session, reproduces the PyTorch graph: a wrong
binding or a conversion route that changed the function fails here, naming the output.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.cache import Artifact, artifact_bytes
from pipeline.contract import Binding, Contract, read_contract, usage_steps, write_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import InternalError, UserError
from pipeline.spec import StreamSpec, format_ms

ARTIFACT = "model.mlpackage"
OPS_FILE = "ops.json"
CHECK_FILE = "check.json"
# largest error of an output, as a fraction of max(1, largest |PyTorch value|), a float model may show in one call
# (each call from PyTorch's state); quantized models are verify's to judge over real speech
QUANTIZED = ("int8w", "w8a8")  # the precisions a recipe applies to
FLOAT_BOUNDS = {"fp32": 1e-4, "fp16": 3e-2, "stateful": 3e-2}


class CoreMlConfig(StageConfig):
    precision: Literal["fp32", "fp16", "int8w", "w8a8", "stateful"] = Field(description="Weights / compute of the ML Program.")
    variant: str = Field("", exclude=True, description="Variant name for messages, e.g. 'coreml-fp16@20ms' (not part of the key).")
    deployment_target: Literal["iOS16", "iOS17", "iOS18"] = Field("iOS17", description="minimum_deployment_target of the conversion.")
    compute_units: str = Field("ALL", description="Compute units the contract asks the app to load the model with.")
    weight_threshold: int | None = Field(None, ge=0, description="int8w/w8a8: weights with fewer elements stay float (None: not quantized).")
    calibration_samples: int | None = Field(None, gt=0, description="w8a8: recorded pairs the activation ranges come from; None: all.")
    keep_float_states: tuple[str, ...] = Field((), description="w8a8: state inputs whose recurrence keeps fp16 activations.")
    keep_fp16_ops: tuple[str, ...] = Field((), description="w8a8: MIL op names whose activations stay fp16 (their inputs and output unquantized).")
    keep_float_weights: tuple[str, ...] = Field(
        (), description="int8w/w8a8: MIL op names of weight consts (or of the ops reading them) whose weights stay fp16."
    )
    calibration_method: Literal["minmax", "percentile"] = Field(
        "minmax", description="w8a8: activation ranges from min/max, or clipped to the 99.99th percentile of |x|, on the recorded pairs."
    )
    fp32_spectrum: bool = Field(True, description="fp16-compute variants of a raw-PCM model: the ops from the PCM input to each log stay fp32.")
    check_steps: int = Field(64, gt=0, description="Calls compared against PyTorch to check the conversion and its bindings.")


def mil_ops(package: Path) -> list[str]:
    """Op types of the saved program's main function, as Core ML will see them (constants excluded)."""
    from pipeline.backends.coreml.interpreter import load_program

    return [op.op_type for op in load_program(package).functions["main"].operations if op.op_type != "const"]


def quantize_weights(model, threshold: int, keep: tuple[str, ...] = ()):
    """int8 weights, but for the ops named in `keep` (the fp32 spectrum: its basis is the model's front end)."""
    import coremltools.optimize as cto

    config = cto.coreml.OptimizationConfig(
        global_config=cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=threshold),
        op_name_configs=dict.fromkeys(keep),
    )
    return cto.coreml.linear_quantize_weights(model, config)


def quantize_activations(model, workdir: Path, samples: list[dict[str, np.ndarray]], keep: tuple[str, ...], method: str = "minmax"):
    """int8 activations with ranges measured by the MIL interpreter on the recorded (chunk, state) pairs (`method`:
    see `interpreter.activation_ranges`); the ops named in `keep` keep fp16 activations."""
    import coremltools.optimize as cto

    from pipeline.backends.coreml.activations import quantize_activations as quantize
    from pipeline.backends.coreml.interpreter import MilInterpreter, activation_ranges

    staged = workdir / "float.mlpackage"
    model.save(str(staged))
    ranges = activation_ranges(MilInterpreter(staged), samples, method)
    config = cto.coreml.OptimizationConfig(
        global_config=cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"),
        op_name_configs=dict.fromkeys(keep),  # None: leave the op's activations alone
    )
    return quantize(model, ranges, config)


def kept_in_fp16(model, spec, states: tuple[str, ...], variant: str, where: str) -> tuple[str, ...]:
    """w8a8: the ops whose activations stay fp16: the named states' recurrences, and every op whose result is a
    model output read inside the model too (a state h_out feeding the head), which coremltools cannot requantize."""
    from pipeline.backends.coreml.activations import outputs_read_inside
    from pipeline.backends.coreml.recurrence import recurrence_ops

    program = model._mil_program
    return tuple(dict.fromkeys(recurrence_ops(program, spec, states, variant, where) + tuple(outputs_read_inside(program))))


def check_hand_lists(config: CoreMlConfig, model, variant: str, where: str) -> None:
    """The keep lists name ops of this program, at a precision they change: coremltools ignores a name it does not
    find, so a misspelt (or renamed) op would silently quantize what it was meant to keep."""
    import difflib

    applies = {"keep_float_states": ("w8a8",), "keep_fp16_ops": ("w8a8",), "keep_float_weights": ("int8w", "w8a8")}
    for field, precisions in applies.items():
        if getattr(config, field) and config.precision not in precisions:
            raise UserError(f"{variant}: {field} applies to {'/'.join(precisions)} only, not {config.precision}", where=where)
    if config.calibration_method != "minmax" and config.precision != "w8a8":
        raise UserError(f"{variant}: calibration_method {config.calibration_method!r} applies to w8a8 only (weights are not calibrated)", where=where)
    operations = list(model._mil_program.functions["main"].operations)
    names = {"keep_fp16_ops": [op.name for op in operations if op.op_type != "const"], "keep_float_weights": [op.name for op in operations]}
    for field, known in names.items():
        for name in getattr(config, field):
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                raise UserError(
                    f"{variant}: {field} names {name!r}, which is no op of the converted program",
                    where=where,
                    hint=f"did you mean {close[0]!r}?" if close else "op names are the MIL program's (see the search's search.json)",
                )


def make_reproducible(package: Path) -> None:
    """The same model, byte for byte, from the same inputs: coremltools names a package's items with random UUIDs,
    stamps the conversion date and serializes protobuf maps in no fixed order. Item ids become UUID5s of their
    paths, the date goes, and the spec is written with deterministic serialization."""
    import uuid

    from coremltools.proto import Model_pb2

    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, entry["path"])) for old, entry in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {renamed[old]: entry for old, entry in sorted(manifest["itemInfoEntries"].items(), key=lambda kv: kv[1]["path"])}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")
    root = next(entry for entry in manifest["itemInfoEntries"].values() if entry["name"].endswith(".mlmodel"))
    spec_path = package / "Data" / root["path"]
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec.description.metadata.userDefined.pop("com.github.apple.coremltools.conversion_date", None)
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def coreml_bindings(model, contract: Contract, stateful: bool, variant: str) -> dict[str, Binding]:
    """Each contract tensor as the saved model describes it (names as coremltools kept them)."""
    description = model.get_spec().description
    described = {f.name for f in (*description.input, *description.output)}
    spec = contract.stream
    names = {n: n for n in [i.name for i in spec.inputs] + [o.name for o in spec.outputs]}
    if not stateful:
        names |= {s.input: s.input for s in spec.states} | {s.output: s.output for s in spec.states}
    missing = sorted(n for n in names.values() if n not in described)
    if missing:
        raise InternalError(f"{variant}: the converted model has no tensor named {missing}; it has {sorted(described)}")
    bindings = {b: Binding(name=b, shape=t.shape, dtype="float32") for b, t in _contract_tensors(contract).items() if b in names}
    if stateful:
        from pipeline.backends.coreml.graph import state_buffer_names

        buffers = state_buffer_names(contract)
        in_model = {f.name for f in description.state}
        for s in spec.states:
            if buffers[s.input] not in in_model:
                raise InternalError(f"{variant}: the stateful model has no state {buffers[s.input]!r}; it has {sorted(in_model)}")
            bindings[s.input] = bindings[s.output] = Binding(name=buffers[s.input], shape=s.shape, dtype="float16")
    return bindings


def _contract_tensors(contract: Contract) -> dict:
    spec = contract.stream
    tensors = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    for s in spec.states:
        tensors[s.input] = tensors[s.output] = s
    return tensors


class CoreMlStage(Stage):
    name = "coreml"
    # 5: guard.json, the state-range guard; 6: the recipe (contract `quantization`, ops.json); 7: parts of a state;
    # 8: check.json compares log-probability outputs as probabilities (bindcheck)
    version = "8"
    tools = ("coremltools", "torch")
    Config = CoreMlConfig

    @classmethod
    def run(cls, config: CoreMlConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        import tempfile

        from pipeline.backends import get_backend
        from pipeline.backends.coreml.graph import convert, quiet
        from pipeline.export.session import TorchSession
        from pipeline.quant.quantizer import with_recipe
        from pipeline.verify.bindcheck import check_reproduces
        from pipeline.verify.records import load_calibration

        source = inputs["model"].path
        contract = read_contract(source)
        spec = contract.stream
        quantized = config.precision in QUANTIZED
        config, recipe = with_recipe(get_backend("coreml").load_quantizer(), config, inputs, config.precision) if quantized else (config, None)
        variant = config.variant or f"coreml-{config.precision}@{format_ms(spec.chunk_ms)}ms"
        where, stateful = ctx.node_id, config.precision == "stateful"
        if config.precision == "w8a8" and "calibration" not in inputs:
            raise InternalError(f"{variant}: a w8a8 coreml node was planned without a calibration input")
        if stateful and not spec.states:
            raise UserError(f"{variant}: the model has no recurrent state to keep inside a stateful Core ML model", where="backends.coreml")

        started, keep = time.perf_counter(), ()
        converted = convert(source, contract, config.precision, config.deployment_target, variant, where, config.fp32_spectrum)
        model, route = converted.model, converted.route
        check_hand_lists(config, model, variant, where)
        recorded = load_calibration(inputs["calibration"].path) if "calibration" in inputs else None
        workdir = Path(tempfile.mkdtemp(prefix="speechport-coreml-"))
        try:
            with quiet():
                if config.precision == "w8a8":
                    # the fp32 spectrum stays unquantized too: coremltools quantizes fp16 activations only
                    keep = tuple(dict.fromkeys(converted.kept_fp32 + kept_in_fp16(model, spec, config.keep_float_states, variant, where) + config.keep_fp16_ops))
                    samples = _samples(recorded, spec.input_names, config.calibration_samples)
                    model = quantize_activations(model, workdir, samples, keep, config.calibration_method)
                if quantized:
                    threshold = 2048 if config.weight_threshold is None else config.weight_threshold
                    model = quantize_weights(model, threshold, tuple(dict.fromkeys(converted.kept_fp32 + config.keep_float_weights)))
            model.short_description = f"{contract.target}: {contract.model}, {config.precision}, streaming {format_ms(spec.chunk_ms)} ms chunks"
            model.user_defined_metadata.update({"speechport.target": contract.target, "speechport.precision": config.precision})
            model.save(str(workdir / ARTIFACT))
            make_reproducible(workdir / ARTIFACT)
            shutil.move(str(workdir / ARTIFACT), out / ARTIFACT)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        seconds = time.perf_counter() - started

        ops = mil_ops(out / ARTIFACT)
        listing = {
            "precision": config.precision,
            "route": route,
            "histogram": dict(sorted(Counter(ops).items())),
            "kept_fp32": list(converted.kept_fp32),
            "kept_fp16_activations": list(keep),
            "kept_fp16_weights": list(config.keep_float_weights),
            "recipe": recipe,
        }
        (out / OPS_FILE).write_text(json.dumps(listing, indent=1) + "\n")
        update = {
            "backend": "coreml",
            "precision": config.precision,
            "artifact": ARTIFACT,
            "bindings": coreml_bindings(model, contract, stateful, variant),
            "state_in_model": stateful,
            "quantization": recipe,
            "runtime": {"compute_units": config.compute_units, "minimum_deployment_target": config.deployment_target},
        }
        if stateful:
            update["usage"] = usage_steps(spec, state_in_model=True)
        write_contract(out, contract.model_copy(update=update))
        if config.precision in ("int8w", "w8a8"):
            calibration = inputs["calibration"].path if "calibration" in inputs else None
            check_state_guard(out / ARTIFACT, spec, calibration, out, variant, where)

        check = check_reproduces(
            TorchSession(source),
            get_backend("coreml").open_session(out),
            recorded,
            config.check_steps,
            FLOAT_BOUNDS.get(config.precision),
            ".mlpackage",
            f"the PyTorch graph ({route})",
            variant,
            where,
        )
        (out / CHECK_FILE).write_text(json.dumps(check, indent=1) + "\n")
        worst = ", ".join(f"{k} {v:.2g}" for k, v in check["max_abs"].items())
        ctx.log(f"{variant}: {len(ops)} MIL ops via {route} ({seconds:.1f} s, {artifact_bytes(out / ARTIFACT) / 1e6:.2f} MB); max abs error vs PyTorch: {worst}")


def check_state_guard(package: Path, spec: StreamSpec, calibration: Path | None, out: Path, variant: str, where: str) -> None:
    """Every quantize/dequantize a state output comes out of, and every quantize reading a state input, must hold
    the state input's recorded range: guard.json, or a UserError naming the op (int8w: every state float)."""
    from pipeline.backends.coreml.interpreter import load_program
    from pipeline.backends.coreml.state_ranges import state_encodings
    from pipeline.verify.records import RANGES_FILE, load_extents
    from pipeline.verify.state_guard import guard

    ranges = None if calibration is None else json.loads((calibration / RANGES_FILE).read_text())["ranges"]
    extents = None if calibration is None else load_extents(calibration)
    outputs, entries = state_encodings(load_program(package), spec, variant)

    def fix(short: list[str]) -> str:
        return f"keep the state path in fp16 with `coreml.keep_float_states: {{w8a8: {short}}}`, or build int8w (float activations)"

    guard(spec.states, ranges, outputs, entries, out, variant=variant, where=where, fix=fix, extents=extents)


def _samples(recorded: dict[str, np.ndarray] | None, names: list[str], limit: int | None) -> list[dict[str, np.ndarray]]:
    if recorded is None:
        return []
    count = len(recorded[names[0]])
    picks = np.arange(count) if limit is None or limit >= count else np.linspace(0, count - 1, limit).round().astype(int)
    return [{n: recorded[n][k].astype(np.float32) for n in names} for k in picks]
