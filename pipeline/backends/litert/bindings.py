"""How a .tflite's tensors bind to the contract, and the numeric check that a binding is right.

Names, as onnx2tf 1.28.8 writes them: inputs keep their ONNX names; float outputs are `Identity`,
`Identity_1`, ... in ONNX order (no SignatureDef); the quantized files' signature outputs
`output_0`, `output_1`, ... are in ONNX order, while the raw tensor order differs, so outputs are
bound through the signature, never by raw order. 3-D tensors may come out channels-last: the
binding records the permutation.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from pipeline.contract import Binding
from pipeline.errors import InternalError
from pipeline.spec import StreamSpec

# largest error of an output, as a fraction of max(1, largest |reference value|), a float file may show against
# onnxruntime. Quantized files get no bound here: their accuracy is verify's to judge over real speech, where a
# broken quantization shows up as a finding rather than as a crash of this stage.
FLOAT_BOUNDS = {"fp32": 1e-4, "fp16": 3e-2}


def find_permutation(contract_shape: tuple[int, ...], artifact_shape: tuple[int, ...], what: str) -> tuple[int, ...] | None:
    """The axis order taking the contract's layout to the artifact's, None if identical; channels-last preferred."""
    if tuple(artifact_shape) == tuple(contract_shape):
        return None
    rank = len(contract_shape)
    candidates = [p for p in itertools.permutations(range(rank)) if tuple(contract_shape[i] for i in p) == tuple(artifact_shape)]
    if not candidates:
        raise InternalError(f"{what}: shape {list(artifact_shape)} in the .tflite is no transpose of the contract's {list(contract_shape)}")
    channels_last = (0, *range(2, rank), 1)
    return channels_last if channels_last in candidates else candidates[0]


def io_details(interpreter, spec: StreamSpec) -> dict[str, dict]:
    """Contract name -> interpreter tensor detail: through the signature if the file has one, else onnx2tf's names."""
    details = {d["index"]: d for d in (*interpreter.get_input_details(), *interpreter.get_output_details())}
    signatures = interpreter._get_full_signature_list()  # the public get_signature_list() omits the tensor indices
    found: dict[str, dict] = {}
    if signatures:
        signature = next(iter(signatures.values()))
        found |= {n: details[signature["inputs"][n]] for n in spec.input_names if n in signature["inputs"]}
        keys = {n: f"output_{k}" for k, n in enumerate(spec.output_names)}
        found |= {n: details[signature["outputs"][key]] for n, key in keys.items() if key in signature["outputs"]}
    else:
        by_name = {d["name"]: d for d in details.values()}
        keys = {n: "Identity" if k == 0 else f"Identity_{k}" for k, n in enumerate(spec.output_names)}
        found |= {n: by_name[n] for n in spec.input_names if n in by_name}
        found |= {n: by_name[key] for n, key in keys.items() if key in by_name}
    missing = [n for n in (*spec.input_names, *spec.output_names) if n not in found]
    if missing:
        names = sorted(d["name"] for d in details.values())
        raise InternalError(f"cannot find {missing} among the .tflite I/O tensors {names} (signatures: {signatures})")
    return found


def tflite_bindings(interpreter, spec: StreamSpec, variant: str) -> dict[str, Binding]:
    shapes = {i.name: i.shape for i in spec.inputs} | {o.name: o.shape for o in spec.outputs}
    shapes |= {s.input: s.shape for s in spec.states} | {s.output: s.shape for s in spec.states}
    bindings = {}
    for name, detail in io_details(interpreter, spec).items():
        if np.dtype(detail["dtype"]).kind != "f":
            raise InternalError(f"{variant}: {name} has {np.dtype(detail['dtype']).name} I/O; this stage writes float I/O")
        shape = tuple(int(d) for d in detail["shape"])
        permutation = find_permutation(shapes[name], shape, f"{variant}: {name}")
        bindings[name] = Binding(name=detail["name"], shape=shape, dtype=np.dtype(detail["dtype"]).name, permutation=permutation)
    return {name: bindings[name] for name in (*spec.input_names, *spec.output_names)}


def calibration_samples(recorded: dict[str, np.ndarray], spec: StreamSpec, bindings: dict[str, Binding], limit: int | None) -> dict[str, np.ndarray]:
    """Recorded pairs in the artifact's layout, keyed by graph input name (the SavedModel signature's keys)."""
    count = len(recorded[spec.input_names[0]])
    keep = np.unique(np.linspace(0, count - 1, min(limit or count, count)).round().astype(int))
    samples = {}
    for name in spec.input_names:
        values, perm = recorded[name][keep].astype(np.float32), bindings[name].permutation
        samples[name] = values if perm is None else np.ascontiguousarray(np.transpose(values, (0, *(p + 1 for p in perm))))
    return samples


def check_against_onnx(
    onnx_dir: Path, tflite_dir: Path, recorded: dict[str, np.ndarray] | None, steps: int, precision: str, variant: str, where: str
) -> dict:
    """Outputs of the .tflite (through its contract) against onnxruntime's: a wrong binding fails here, loudly.

    With recorded (chunk, state) pairs: one call per pair. Without: synthetic chunks, onnxruntime
    feeding back its own state and the .tflite called on the same state each time.
    Two outputs of one shape bound the wrong way round match each other's reference better than
    their own, whatever the precision; float files must also stay within FLOAT_BOUNDS.
    """
    from pipeline.backends import get_backend

    reference, candidate = get_backend("onnxruntime").open_session(onnx_dir), get_backend("litert").open_session(tflite_dir)
    spec, names = reference.spec, reference.spec.output_names
    shape = {n: reference.contract.bindings[n].shape for n in names}
    pairs = [(a, b) for a in names for b in names if a != b and shape[a] == shape[b]]
    error, crossed, magnitude = dict.fromkeys(names, 0.0), dict.fromkeys(pairs, 0.0), dict.fromkeys(names, 0.0)
    rng = np.random.default_rng(0)
    count = steps if recorded is None else min(steps, len(recorded[spec.input_names[0]]))
    picks = None if recorded is None else np.linspace(0, len(recorded[spec.input_names[0]]) - 1, count).round().astype(int)
    for k in range(count):
        if picks is not None:
            a = reference.call({n: recorded[n][picks[k]] for n in spec.input_names})  # type: ignore[index]
            b = candidate.call({n: recorded[n][picks[k]] for n in spec.input_names})  # type: ignore[index]
        else:
            scale = 0.1 if spec.frontend.kind == "pcm" else 2.0
            chunk = {i.name: (rng.standard_normal(i.shape) * scale).astype(np.float32) for i in spec.inputs}
            # both start each call from onnxruntime's state: the bound is on one call, not on a random-input trajectory
            feeds, a = reference.advance(chunk)
            b = candidate.call(feeds)
        for n in names:
            error[n] = max(error[n], float(np.abs(a[n] - b[n]).max()))
            magnitude[n] = max(magnitude[n], float(np.abs(a[n]).max()))
        for x, y in pairs:
            crossed[(x, y)] = max(crossed[(x, y)], float(np.abs(a[x] - b[y]).max()))
    problems = [
        f"{x} matches the tensor bound to {y} better ({crossed[(x, y)]:.3g}) than its own ({error[x]:.3g})"
        for x, y in pairs
        if crossed[(x, y)] < 0.5 * error[x]
    ]
    for n in names:
        bound = FLOAT_BOUNDS.get(precision, np.inf) * max(1.0, magnitude[n])
        if not error[n] <= bound:
            b_ = candidate.contract.bindings[n]
            problems.append(
                f"{n} (.tflite tensor {b_.name!r}, shape {list(b_.shape)}, {b_.dtype}): max abs error {error[n]:.3g} "
                f"against onnxruntime exceeds {bound:.3g} (largest |value| {magnitude[n]:.3g})"
            )
    if problems:
        mode = "recorded calibration pairs" if recorded is not None else "synthetic chunks on onnxruntime's state"
        raise InternalError(f"{variant} ({where}): the .tflite does not reproduce the ONNX graph over {count} {mode}: " + "; ".join(problems))
    mode = "recorded_pairs" if recorded is not None else "synthetic_on_reference_state"
    return {"mode": mode, "calls": count, "max_abs": error, "max_abs_reference": magnitude}
