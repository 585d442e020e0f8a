"""contract.json tells an app the chunk in samples and in milliseconds, and how to decide from each decision output."""

from __future__ import annotations

from pathlib import Path

from pipeline.contract import Contract, identity_bindings, read_contract, usage_steps, write_contract
from pipeline.spec import StreamSpec


def vad_stream(chunk: dict, classes: list[str]) -> StreamSpec:
    samples = chunk.get("chunk_samples", 512)
    return StreamSpec.model_validate(
        {
            **chunk,
            "frontend": {"kind": "pcm"},
            "inputs": [{"name": "pcm", "shape": [samples], "time_axis": 0}],
            "states": [{"input": "h_in", "output": "h_out", "shape": [1, 8]}],
            "outputs": [
                {"name": "speech_prob", "shape": [1, 1], "kind": "probability", "threshold": 0.6},
                {"name": "events", "shape": [1, 3], "kind": "decision_logits", "positive_classes": [1, 2]},
            ],
            "decoder": {"kind": "decision", "classes": classes},
        }
    )


def test_usage_states_samples_and_milliseconds_and_how_to_decide() -> None:
    steps = usage_steps(vad_stream({"chunk_samples": 500}, ["silence", "speech", "singing"]))
    assert "Read 500 samples (31.25 ms at 16000 Hz, mono) from the microphone." in steps
    assert "Keep output 'h_out' and feed it as 'h_in' on the next call." in steps
    assert "Decide from output 'speech_prob', one value p in [0, 1] per frame: positive when p >= 0.6, else negative." in steps
    assert (
        "Decide from output 'events': arg-max class per frame among ['silence', 'speech', 'singing']. "
        "The frame is positive when that class is one of [1, 2] (speech, singing)." in steps
    )


def test_a_two_class_decoder_names_a_probabilitys_decision() -> None:
    stream = vad_stream({"chunk_samples": 512}, ["silence", "speech"]).model_copy()
    stream = stream.model_copy(update={"outputs": stream.outputs[:1]})
    steps = usage_steps(stream)
    assert "Read 512 samples (32 ms at 16000 Hz, mono) from the microphone." in steps
    assert "Decide from output 'speech_prob', one value p in [0, 1] per frame: speech when p >= 0.6, else silence." in steps


def test_the_contract_file_states_both_figures_and_reads_back(tmp_path: Path) -> None:
    stream = vad_stream({"chunk_ms": 32}, ["silence", "speech", "singing"])
    contract = Contract(
        target="t", model="m:build", backend="onnxruntime", precision="fp32", artifact="model.onnx",
        stream=stream, bindings=identity_bindings(stream), usage=usage_steps(stream),
    )
    write_contract(tmp_path, contract)
    import json

    document = json.loads((tmp_path / "contract.json").read_text())
    assert document["schema"] == 3
    assert (document["stream"]["chunk_samples"], document["stream"]["chunk_ms"]) == (512, 32.0)
    assert document["stream"]["outputs"][0]["threshold"] == 0.6 and document["stream"]["outputs"][1]["positive_classes"] == [1, 2]
    assert read_contract(tmp_path) == contract
