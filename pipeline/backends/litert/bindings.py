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
    """Outputs of the .tflite (through its contract) against onnxruntime's: a wrong binding fails here, loudly."""
    from pipeline.backends import get_backend
    from pipeline.verify.bindcheck import check_reproduces

    reference, candidate = get_backend("onnxruntime").open_session(onnx_dir), get_backend("litert").open_session(tflite_dir)
    return check_reproduces(reference, candidate, recorded, steps, FLOAT_BOUNDS.get(precision), ".tflite", "the ONNX graph", variant, where)
