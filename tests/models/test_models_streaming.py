"""Every zoo model streams chunk by chunk exactly as it runs on the whole utterance, and its
streaming graph exports to ONNX and runs in onnxruntime with the same numbers.

Random weights with a fixed seed (plus non-trivial normalisation statistics); no checkpoint
or corpus is needed.
"""

from __future__ import annotations

import importlib
import io

import numpy as np
import pytest
import torch

from pipeline.audio.frontend import logmel_batch
from pipeline.spec import LogMelFrontend, PcmFrontend

MODELS = ["lstm_ctc", "dscnn_ctc", "conformer_ctc", "kws"]
TOL = 1e-5


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = importlib.import_module(f"models.{name}").build().eval()
    with torch.no_grad():
        for module in model.modules():  # non-trivial feature statistics, as after training
            if hasattr(module, "inv_std") and hasattr(module, "mean"):
                module.mean.uniform_(-1.0, 1.0)
                module.inv_std.uniform_(0.5, 1.5)
        for pname, param in model.named_parameters():  # zero-initialised extras get values too
            if "rel_bias" in pname or "shift" in pname:
                param.uniform_(-0.5, 0.5)
    return model


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like test signal: noise bursts and tones with pauses, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16_000)
    t = np.arange(n) / 16_000
    envelope = (np.sin(2 * np.pi * 1.3 * t) > -0.2).astype(np.float64)
    signal = 0.3 * np.sin(2 * np.pi * (150 + 100 * np.sin(2 * np.pi * 0.7 * t)) * t) + 0.1 * rng.standard_normal(n)
    return (signal * envelope).astype(np.float32)


def _chunks(spec, audio: np.ndarray, n_chunks: int) -> list[np.ndarray]:
    """n_chunks chunk inputs cut from the whole-utterance frontend output (same as streaming it)."""
    if isinstance(spec.frontend, PcmFrontend):
        pcm = audio[: n_chunks * spec.chunk_samples]
        return list(pcm.reshape(n_chunks, spec.chunk_samples))
    frames = spec.inputs[0].shape[0]
    feats = logmel_batch(audio[: n_chunks * spec.chunk_samples], spec.frontend)
    return list(feats.reshape(n_chunks, frames, -1))


def _initial_state(spec) -> list[torch.Tensor]:
    return [torch.full(s.shape, s.init, dtype=torch.float32) for s in spec.states]


def _stream(model, spec, chunks) -> tuple[list[np.ndarray], list[tuple[np.ndarray, ...]]]:
    """Streams the chunks through model.forward; returns per-chunk outputs and per-chunk state in."""
    state = _initial_state(spec)
    n_out = len(spec.outputs)
    outputs, states = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(tuple(s.numpy().copy() for s in state))
            result = model(torch.from_numpy(chunk), *state)
            assert len(result) == n_out + len(spec.states)
            outputs.append(tuple(r.numpy().copy() for r in result[:n_out]))
            state = list(result[n_out:])
    return outputs, states


@pytest.mark.parametrize("chunk_ms", [20, 40])
@pytest.mark.parametrize("name", MODELS)
def test_streaming_equals_batch(name: str, chunk_ms: int) -> None:
    model = _model(name)
    spec = model.streaming_spec(chunk_ms)
    n_chunks = 60
    audio = _audio(n_chunks * chunk_ms / 1000 + 0.1)
    chunks = _chunks(spec, audio, n_chunks)

    # the spec describes exactly what forward takes and returns
    assert [tuple(i.shape) for i in spec.inputs] == [chunks[0].shape]
    outputs, _ = _stream(model, spec, chunks)
    state = _initial_state(spec)
    with torch.no_grad():
        result = model(torch.from_numpy(chunks[0]), *state)
    for out_spec, value in zip(spec.outputs, result[: len(spec.outputs)]):
        assert tuple(value.shape) == out_spec.shape, out_spec.name
    for state_spec, value in zip(spec.states, result[len(spec.outputs) :]):
        assert tuple(value.shape) == state_spec.shape, state_spec.output
    assert len(set(spec.input_names)) == len(spec.input_names)
    assert len(set(spec.output_names)) == len(spec.output_names)

    # streaming == batch
    whole = np.concatenate(chunks, axis=spec.inputs[0].time_axis)
    with torch.no_grad():
        batch = model.forward_batch(torch.from_numpy(whole))
    assert len(batch) == len(spec.outputs)
    for k, out_spec in enumerate(spec.outputs):
        streamed = np.concatenate([o[k] for o in outputs], axis=out_spec.time_axis)
        assert streamed.shape == tuple(batch[k].shape), out_spec.name
        assert np.abs(streamed - batch[k].numpy()).max() < TOL, out_spec.name
        assert np.abs(streamed).max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("name", MODELS)
def test_all_io_is_at_most_2d(name: str) -> None:
    spec = _model(name).streaming_spec(20)
    for shape in [i.shape for i in spec.inputs] + [s.shape for s in spec.states] + [o.shape for o in spec.outputs]:
        assert 1 <= len(shape) <= 2
    assert isinstance(spec.frontend, PcmFrontend if name == "kws" else LogMelFrontend)


def _trace_and_export(model, spec) -> bytes:
    args = tuple(torch.zeros(i.shape) for i in spec.inputs) + tuple(_initial_state(spec))
    traced = torch.jit.trace(model, args)
    with torch.no_grad():
        for got, want in zip(traced(*args), model(*args)):
            assert torch.equal(got, want)
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        args,
        buffer,
        input_names=spec.input_names,
        output_names=spec.output_names,
        dynamo=False,
        opset_version=17,
    )
    return buffer.getvalue()


@pytest.mark.parametrize("name", MODELS)
def test_onnx_streaming_matches_torch(name: str) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _model(name)
    spec = model.streaming_spec(20)
    blob = _trace_and_export(model, spec)
    graph = onnx.load_from_string(blob).graph
    for value in list(graph.input) + list(graph.output):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        assert all(d > 0 for d in dims) and 1 <= len(dims) <= 2, (value.name, dims)  # static, no batch axis
    ops = {node.op_type for node in graph.node}
    assert not ops & {"Split", "Einsum", "ScatterND", "GatherND", "Loop", "If", "LSTM", "GRU"}, ops

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    n_chunks = 100
    chunks = _chunks(spec, _audio(n_chunks * 0.02 + 0.1, seed=1), n_chunks)
    outputs, _ = _stream(model, spec, chunks)
    state = [s.numpy() for s in _initial_state(spec)]
    n_out = len(spec.outputs)
    worst = 0.0
    for chunk, expected in zip(chunks, outputs):
        feeds = dict(zip(spec.input_names, [chunk, *state]))
        result = session.run(spec.output_names, feeds)
        for got, want in zip(result[:n_out], expected):
            worst = max(worst, float(np.abs(got - want).max()))
        state = result[n_out:]
    assert worst < TOL, worst
