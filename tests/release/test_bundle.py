"""Issue 13's acceptance on a tiny build: bundle contents, verify-bundle, the reference client, tampering, reproducibility."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from pipeline.cli import main
from pipeline.release.archive import archive_sha256, bundle_files, check_sums


def test_bundle_holds_every_variant_with_contract_golden_vectors_and_client(released) -> None:
    root = released.bundle.directory
    files = set(bundle_files(root))
    assert {"README.md", "MODEL_CARD.md", "provenance.json", "SHA256SUMS", "report/report.json", "report/report.md"} <= files
    for variant, client in (
        ("litert-int8@20ms", "client/SpeechportStream.kt"),
        ("coreml-stateful@20ms", "client/SpeechportStream.swift"),
        ("onnxruntime-fp32@20ms", "client/speechport_stream.cpp"),
    ):
        assert {f"{variant}/contract.json", f"{variant}/{client}", f"{variant}/golden/golden.json", f"{variant}/golden/audio.npy"} <= files
        golden = json.loads((root / variant / "golden" / "golden.json").read_text())
        steps = golden["steps"]
        h_in, h_out = (np.load(root / variant / "golden" / f"{k}.npy") for k in ("state_in.h_in", "output.h_out"))
        assert h_in.shape[0] == steps and not h_in[0].any()  # from the initial state
        np.testing.assert_array_equal(h_in[1:], h_out[:-1])  # each call's state is the previous call's output
    assert not check_sums(root)
    assert "SHA256SUMS" not in (root / "SHA256SUMS").read_text()


def test_provenance_names_every_stage_key_the_tools_and_the_commit(released) -> None:
    document = json.loads((released.bundle.directory / "provenance.json").read_text())
    keys = {s["node"]: s["key"] for s in document["stages"]}
    assert keys == {node_id: released.built[node_id].key for node_id in released.graph.nodes}
    assert {"onnx2tf", "coremltools", "onnxruntime", "python"} <= set(document["tools"])
    assert len(document["git"]["commit"]) == 40 and isinstance(document["git"]["dirty"], bool)
    assert document["manifest"]["text"] == released.manifest.read_text()
    assert "/tmp" not in json.dumps(document["stages"])
    varying = {entry["files"] for entry in document["not_reproducible"]}
    assert "report/report.json" in varying and not [v for v in varying if "mlpackage" in v]
    assert all(next(released.bundle.directory.glob(pattern), None) for pattern in varying)


def test_verify_bundle_passes_on_the_directory_and_the_archive(released, capsys) -> None:
    assert main(["verify-bundle", str(released.bundle.directory)]) == 0
    assert main(["verify-bundle", str(released.bundle.archive)]) == 0
    assert "golden vectors replayed, equal" in capsys.readouterr().err


def test_a_changed_byte_fails_verify_bundle_naming_the_file(released, tmp_path: Path, capsys) -> None:
    copy = tmp_path / released.bundle.directory.name
    shutil.copytree(released.bundle.directory, copy)
    model = copy / "litert-int8@20ms" / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    assert main(["verify-bundle", str(copy)]) == 1
    assert "litert-int8@20ms/model.tflite: content changed" in capsys.readouterr().err


def test_a_changed_golden_vector_with_matching_sums_is_named_by_step(released, tmp_path: Path, capsys) -> None:
    from pipeline.release.archive import write_sums

    copy = tmp_path / released.bundle.directory.name
    shutil.copytree(released.bundle.directory, copy)
    path = copy / "onnxruntime-fp32@20ms" / "golden" / "output.logits.npy"
    logits = np.load(path)
    logits[7] += 1.0
    np.save(path, logits)
    write_sums(copy)  # someone who also rewrote the sums: the replay still catches it
    assert main(["verify-bundle", str(copy)]) == 1
    assert "onnxruntime-fp32@20ms/golden/output.logits.npy step 7" in capsys.readouterr().err


def test_two_bundle_writes_from_the_same_build_are_byte_identical(released, rerelease, tmp_path: Path) -> None:
    again = rerelease(tmp_path, tmp_path / "again", released.graph, released.built, released.manifest)
    assert archive_sha256(again.archive) == archive_sha256(released.bundle.archive)


@pytest.mark.parametrize("variant", ["litert-int8@20ms", "coreml-stateful@20ms", "onnxruntime-fp32@20ms"])
def test_reference_client_transcript_equals_what_verify_reported(released, variant: str, tmp_path: Path, capsys) -> None:
    from pipeline.audio.stream import speech_stream
    from pipeline.contract import read_contract

    verify_node = released.graph.nodes[f"verify:{variant}"]
    stream = speech_stream(verify_node.config.data, read_contract(released.bundle.directory / variant).stream)
    wav = tmp_path / "verification.wav"
    soundfile.write(wav, stream.audio, 16_000, subtype="PCM_16")  # the corpus is 16-bit: lossless
    capsys.readouterr()
    assert main(["stream", str(released.bundle.archive), str(wav), "--variant", variant, "--fast"]) == 0
    reported = next(v for v in released.report["variants"] if v["name"] == variant)["transcript"]
    out = capsys.readouterr()
    assert out.out.rstrip("\n") == reported
    assert "dropped 0 chunks" in out.err


def test_stream_names_the_variants_when_a_bundle_has_several(released, tmp_path: Path, capsys) -> None:
    assert main(["stream", str(released.bundle.directory), str(tmp_path / "none.wav")]) == 2
    assert "--variant" in capsys.readouterr().err
