"""The stream spec counts a chunk in samples, with milliseconds derived; a manifest lists chunk lengths in one unit."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.errors import UserError
from pipeline.manifest import load_manifest
from pipeline.plan import plan
from pipeline.spec import ChunkLength, StreamSpec
from tests.conftest import write_manifest


def pcm_io(chunk: dict, **frontend) -> dict:
    samples = chunk.get("chunk_samples") or int(chunk.get("chunk_ms", 20) * frontend.get("sample_rate", 16000) / 1000)
    return {
        **chunk,
        "frontend": {"kind": "pcm", **frontend},
        "inputs": [{"name": "pcm", "shape": [samples], "time_axis": 0}],
        "outputs": [{"name": "y", "shape": [1, 1]}],
    }


def logmel_io(chunk: dict) -> dict:
    return {
        **chunk,
        "frontend": {"kind": "logmel"},
        "inputs": [{"name": "feats", "shape": [1, 2, 80]}],
        "outputs": [{"name": "y", "shape": [1, 2, 30]}],
    }


@pytest.mark.parametrize(("samples", "ms"), [(512, 32.0), (500, 31.25), (320, 20.0), (1, 0.0625)])
def test_a_chunk_is_counted_in_samples_and_milliseconds_are_derived_exactly(samples: int, ms: float) -> None:
    spec = StreamSpec.model_validate(pcm_io({"chunk_samples": samples}))
    assert spec.chunk_samples == samples and spec.chunk_ms == ms
    dumped = spec.model_dump(mode="json")
    assert (dumped["chunk_samples"], dumped["chunk_ms"]) == (samples, ms)
    assert StreamSpec.model_validate(dumped) == spec  # a contract reads back


def test_a_spec_written_in_milliseconds_is_the_same_spec() -> None:
    by_ms = StreamSpec.model_validate(pcm_io({"chunk_ms": 32}))
    assert by_ms == StreamSpec.model_validate(pcm_io({"chunk_samples": 512}))
    assert StreamSpec.model_validate(pcm_io({"chunk_ms": 32, "chunk_samples": 512})) == by_ms
    with pytest.raises(ValidationError, match="chunk_ms 20 disagrees with chunk_samples 512 at 16000 Hz"):
        StreamSpec.model_validate(pcm_io({"chunk_ms": 20, "chunk_samples": 512}))
    with pytest.raises(ValidationError, match="chunk_ms: 0.01 ms is 0.16 samples at 16000 Hz, not a whole number"):
        StreamSpec.model_validate(pcm_io({"chunk_ms": 0.01}))
    with pytest.raises(ValidationError, match="the chunk length is missing"):
        StreamSpec.model_validate(pcm_io({}))
    # 8 kHz: the same 512 samples are 64 ms
    assert StreamSpec.model_validate(pcm_io({"chunk_samples": 512}, sample_rate=8000)).chunk_ms == 64.0


def test_a_log_mel_chunk_keeps_whole_hops_naming_the_field_expected_and_got() -> None:
    assert StreamSpec.model_validate(logmel_io({"chunk_samples": 480})).chunk_ms == 30.0
    with pytest.raises(ValidationError) as caught:
        StreamSpec.model_validate(logmel_io({"chunk_samples": 512}))
    assert "chunk_samples: the log-mel frontend needs whole 160-sample hops (10 ms at 16000 Hz): expected a multiple of 160 samples, got 512" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        StreamSpec.model_validate(logmel_io({"chunk_ms": 25}))
    assert "chunk_ms: the log-mel frontend needs whole 160-sample hops (10 ms at 16000 Hz): expected a multiple of 160 samples, got 25 ms (400 samples)" in str(caught.value)
    # raw PCM has no hop: any positive count
    assert StreamSpec.model_validate(pcm_io({"chunk_samples": 512})).chunk_samples == 512


def test_chunk_labels_say_their_unit() -> None:
    assert ChunkLength(unit="ms", value=20).label == "20ms"
    assert ChunkLength(unit="samples", value=512).label == "512smp"
    spec = StreamSpec.model_validate(pcm_io({"chunk_samples": 512}))
    assert ChunkLength(unit="samples", value=512).matches(spec) and ChunkLength(unit="ms", value=32).matches(spec)
    assert not ChunkLength(unit="ms", value=512).matches(spec)


def _plan_nodes(tmp_path: Path, manifest: dict) -> list[str]:
    return list(plan(load_manifest(write_manifest(tmp_path / "m.yaml", **manifest))).nodes)


def test_chunk_samples_name_nodes_and_variants_in_samples(tmp_path: Path, tiny_manifest: dict) -> None:
    tiny_manifest.pop("chunk_ms")
    tiny_manifest["chunk_samples"] = [320, 640]
    nodes = _plan_nodes(tmp_path, tiny_manifest)
    assert "trace@320smp" in nodes and "verify:onnxruntime-fp32@640smp" in nodes
    assert not [n for n in nodes if n.endswith("ms")]
    tiny_manifest.pop("chunk_samples")
    assert "verify:onnxruntime-fp32@20ms" in _plan_nodes(tmp_path, tiny_manifest)  # neither listed: 20 ms


def test_an_io_manifest_takes_its_chunk_from_io_and_holds_a_listed_one_to_it(tmp_path: Path, tiny_manifest: dict) -> None:
    tiny_manifest.pop("chunk_ms")
    tiny_manifest["io"] = pcm_io({"chunk_samples": 500})
    assert "verify:onnxruntime-fp32@500smp" in _plan_nodes(tmp_path, tiny_manifest)  # 31.25 ms: named in samples
    tiny_manifest["io"] = pcm_io({"chunk_samples": 512})
    assert "verify:onnxruntime-fp32@32ms" in _plan_nodes(tmp_path, tiny_manifest)  # whole milliseconds
    tiny_manifest["chunk_samples"] = [512]
    assert "verify:onnxruntime-fp32@512smp" in _plan_nodes(tmp_path, tiny_manifest)
    tiny_manifest["chunk_samples"] = [320]
    with pytest.raises(UserError, match=r"chunk_samples \[320\] disagrees with io.chunk_samples 512"):
        _plan_nodes(tmp_path, tiny_manifest)
    del tiny_manifest["chunk_samples"]
    tiny_manifest["chunk_ms"] = [32]  # a PCM io takes milliseconds that are not whole 10 ms hops
    assert "verify:onnxruntime-fp32@32ms" in _plan_nodes(tmp_path, tiny_manifest)
    tiny_manifest["chunk_ms"] = [20]
    with pytest.raises(UserError, match=r"chunk_ms \[20\] disagrees with io's chunk of 512 samples \(32 ms\)"):
        _plan_nodes(tmp_path, tiny_manifest)


class SampleCountingModel:
    """Stands in for a model: only its streaming_spec is called."""

    def __init__(self, samples_per_call: int | None = None) -> None:
        self.samples_per_call = samples_per_call

    def streaming_spec(self, chunk_samples: int) -> StreamSpec:
        if chunk_samples % 16:
            raise ValueError(f"chunk_samples must be a multiple of 16, got {chunk_samples}")
        return StreamSpec.model_validate(pcm_io({"chunk_samples": self.samples_per_call or chunk_samples}))


def test_a_model_declares_its_spec_in_samples_or_milliseconds() -> None:
    from models.kws import build as build_kws
    from models.lstm_ctc import build as build_lstm
    from pipeline.model import resolve_spec

    samples, ms = ChunkLength(unit="samples", value=512), ChunkLength(unit="ms", value=20)
    spec, where = resolve_spec(SampleCountingModel(), None, "m:build", samples)
    assert (spec.chunk_samples, where) == (512, "model.streaming_spec")
    assert resolve_spec(build_lstm(hidden=8, layers=1), None, "models.lstm_ctc:build", ms)[0].chunk_samples == 320
    assert resolve_spec(build_kws(), None, "models.kws:build", ChunkLength(unit="samples", value=480))[0].chunk_ms == 30.0
    with pytest.raises(UserError, match="lists chunk_samples but models.lstm_ctc:build's streaming_spec takes no chunk_samples parameter") as caught:
        resolve_spec(build_lstm(hidden=8, layers=1), None, "models.lstm_ctc:build", samples)
    assert caught.value.where == "chunk_samples"
    with pytest.raises(UserError, match="lists chunk_ms but m:build's streaming_spec takes no chunk_ms parameter"):
        resolve_spec(SampleCountingModel(), None, "m:build", ms)
    with pytest.raises(UserError, match=r"streaming_spec\(chunk_samples=500\) raised ValueError: chunk_samples must be a multiple of 16") as caught:
        resolve_spec(SampleCountingModel(), None, "m:build", ChunkLength(unit="samples", value=500))
    assert caught.value.where == "model.streaming_spec"
    with pytest.raises(UserError, match=r"whole 160-sample framing hops \(10 ms\), got 500 samples"):
        resolve_spec(build_kws(), None, "models.kws:build", ChunkLength(unit="samples", value=500))
    with pytest.raises(UserError, match=r"asked for a chunk of 512 samples, model.streaming_spec describes 320 samples \(20 ms\)"):
        resolve_spec(SampleCountingModel(samples_per_call=320), None, "m:build", samples)
