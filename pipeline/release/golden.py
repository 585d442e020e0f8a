"""Golden test vectors: consecutive chunks of real speech through one artifact on its own runtime.

An app team checks its own loop on the device with them, without speechport. Per variant, in
`golden/` (every array float32 in the contract's layout, steps first; `.npy`, readable by numpy
and by a few lines of code in any language):

    audio.npy                  [steps, chunk_samples] raw PCM in [-1, 1], the microphone's view
    input.<name>.npy           [steps, ...] what the frontend makes of it (the chunk input)
    state_in.<input>.npy       [steps, ...] every state input before the call (init at step 0)
    output.<name>.npy          [steps, ...] every output after the call, states included
    golden.json                what the files are, the source audio, the tolerance, the transcript

The chunks start at the beginning of the verification stream from the initial state, so
`state_in` at step k+1 equals the state output at step k: a closed loop reproduces them all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.contract import Contract, read_contract
from pipeline.errors import InternalError

GOLDEN_DIR = "golden"
GOLDEN_FILE = "golden.json"
DEFAULT_STEPS = 300
# the same runtime on another machine may round differently (SIMD width, BLAS blocking); a device
# runtime (GPU delegate, Neural Engine) needs the variant's verification tolerance instead
ATOL, RTOL_OF_RANGE = 1e-5, 1e-4


def _save(path: Path, value: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(value, dtype=np.float32), allow_pickle=False)


def record(variant_dir: Path, backend: str, audio: np.ndarray, out: Path, source: dict, steps: int = DEFAULT_STEPS) -> dict:
    """Stream the first `steps` chunks of `audio` through the variant's runtime (registered `backend`) and write its golden vectors."""
    from pipeline.audio.frontend import stream_chunks
    from pipeline.audio.stream import to_input_layout
    from pipeline.backends import get_backend

    contract = read_contract(variant_dir)
    spec = contract.stream
    available = len(audio) // spec.chunk_samples
    if available < steps:
        raise InternalError(f"golden vectors need {steps} chunks of audio, the verification stream has {available}")
    pcm = np.asarray(audio[: steps * spec.chunk_samples], dtype=np.float32)
    target = spec.inputs[0]
    chunks = [{target.name: to_input_layout(c, target)} for c in stream_chunks(pcm, spec.frontend, spec.chunk_samples)]
    session = get_backend(backend).open_session(variant_dir)
    trace: dict[str, list[np.ndarray]] = {}

    def observe(step: int, feeds: dict, results: dict) -> None:
        for name, value in feeds.items():
            kind = "input" if name in {i.name for i in spec.inputs} else "state_in"
            trace.setdefault(f"{kind}.{name}", []).append(value)
        for name, value in results.items():
            trace.setdefault(f"output.{name}", []).append(value)

    session.stream(chunks, observe=observe)
    out.mkdir(parents=True, exist_ok=True)
    _save(out / "audio.npy", pcm.reshape(steps, spec.chunk_samples))
    files = {"audio": {"file": "audio.npy", "shape": [steps, spec.chunk_samples]}}
    for key, values in sorted(trace.items()):
        stacked = np.stack(values)
        _save(out / f"{key}.npy", stacked)
        files[key] = {"file": f"{key}.npy", "shape": list(stacked.shape)}
    document = {
        "steps": steps,
        "chunk_samples": spec.chunk_samples,
        "sample_rate": spec.frontend.sample_rate,
        "backend": backend,
        "precision": contract.precision,
        "layout": "float32, the contract's layout (not the artifact's): convert through each tensor's binding",
        "source": source,
        "files": files,
        "tolerance": {"atol": ATOL, "rtol_of_range": RTOL_OF_RANGE, "rule": "|got - expected| <= atol + rtol_of_range * max|expected|"},
        "transcript": _transcript(contract, {k.removeprefix("output."): np.stack(v) for k, v in trace.items() if k.startswith("output.")}),
    }
    (out / GOLDEN_FILE).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return document


def _transcript(contract: Contract, outputs: dict[str, np.ndarray]) -> str | None:
    from pipeline.audio.ctc import ctc_greedy
    from pipeline.verify.metrics import per_frame

    decoder = contract.stream.decoder
    if decoder is None or decoder.kind != "ctc_greedy":
        return None
    output = next(o for o in contract.stream.outputs if o.kind == "ctc_logits")
    return ctc_greedy(per_frame(outputs[output.name], output.time_axis), decoder.vocabulary, decoder.blank)


def runtime_backend(variant_dir: Path) -> str:
    """The registered backend that runs a variant: the one its golden vectors were recorded on, else the contract's.

    A contract names the artifact's format (an ONNX graph says "onnx"), which is not always a runtime's name.
    """
    from pipeline.backends import known_backends
    from pipeline.errors import UserError

    recorded = variant_dir / GOLDEN_DIR / GOLDEN_FILE
    if recorded.is_file():
        return json.loads(recorded.read_text())["backend"]
    backend = read_contract(variant_dir).backend
    if backend == "onnx":
        return "onnxruntime"  # the simplified ONNX graph is the onnxruntime backend's artifact
    if backend not in known_backends():
        raise UserError(f"contract backend {backend!r} is not a runtime this speechport has (known: {', '.join(known_backends())})", where=str(variant_dir / "contract.json"))
    return backend


def _load(golden_dir: Path, key: str) -> np.ndarray:
    return np.load(golden_dir / f"{key}.npy", allow_pickle=False)


def _differs(key: str, got: np.ndarray, expected: np.ndarray, step: int | None) -> str | None:
    allowed = ATOL + RTOL_OF_RANGE * float(np.abs(expected).max(initial=0.0))
    error = np.abs(np.asarray(got, np.float32) - expected)
    if got.shape == expected.shape and float(error.max(initial=0.0)) <= allowed:
        return None
    if got.shape != expected.shape:
        return f"{GOLDEN_DIR}/{key}.npy: shape {list(got.shape)}, expected {list(expected.shape)}"
    worst = np.unravel_index(int(error.argmax()), error.shape)
    if step is None:  # a whole stream, steps first: name the first step that differs
        step = int(np.flatnonzero((error > allowed).reshape(len(error), -1).any(axis=1))[0])
    where = f"{GOLDEN_DIR}/{key}.npy step {step}"
    return (
        f"{where}: max abs error {float(error.max()):.3g} > allowed {allowed:.3g} at index {list(map(int, worst))} "
        f"(mean {float(error.mean()):.3g}, got {float(got[worst]):.6g}, expected {float(expected[worst]):.6g})"
    )


def replay(variant_dir: Path) -> list[str]:
    """Replay a variant's golden vectors on its own runtime; the first difference of each check, or [] when all match.

    Two checks: every call on the recorded inputs and state (the model itself), then the closed loop
    from the recorded audio through the frontend (features, state feedback, outputs).
    """
    from pipeline.audio.frontend import stream_chunks
    from pipeline.audio.stream import to_input_layout
    from pipeline.backends import get_backend

    contract = read_contract(variant_dir)
    spec = contract.stream
    golden_dir = variant_dir / GOLDEN_DIR
    session = get_backend(runtime_backend(variant_dir)).open_session(variant_dir)
    inputs = {i.name: _load(golden_dir, f"input.{i.name}") for i in spec.inputs}
    states = {s.input: _load(golden_dir, f"state_in.{s.input}") for s in spec.states}
    expected = {name: _load(golden_dir, f"output.{name}") for name in spec.output_names}
    steps = len(next(iter(inputs.values())))
    problems: list[str] = []
    for k in range(steps):
        got = session.call({**{n: v[k] for n, v in inputs.items()}, **{n: v[k] for n, v in states.items()}})
        found = next((p for name in spec.output_names if (p := _differs(f"output.{name}", got[name], expected[name][k], k))), None)
        if found:
            problems.append(f"{found} (one call from the recorded inputs and state)")
            break
    audio = _load(golden_dir, "audio").reshape(-1)
    target = spec.inputs[0]
    chunks = [{target.name: to_input_layout(c, target)} for c in stream_chunks(audio, spec.frontend, spec.chunk_samples)]
    features = _differs(f"input.{target.name}", np.stack([c[target.name] for c in chunks]), inputs[target.name], None)
    if features:
        problems.append(f"{features} (the frontend on the recorded audio)")
    trace: dict[str, list[np.ndarray]] = {name: [] for name in spec.output_names}
    session.stream(chunks, observe=lambda step, feeds, results: [trace[n].append(results[n]) for n in trace])
    loop = next((p for name in spec.output_names if (p := _differs(f"output.{name}", np.stack(trace[name]), expected[name], None))), None)
    if loop:
        problems.append(f"{loop} (the closed loop from the recorded audio)")
    return problems
