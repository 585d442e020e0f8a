"""The generated clients: parsed by tree-sitter grammars of Kotlin, Swift and C++, and the C++ loop compiled with
g++ and run on the bundle's golden vectors (onnxruntime's C headers are in no registry here, so only the
runtime-independent half is compiled: frontend, bindings, decoder, .npy reader)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

GRAMMARS = {".kt": "tree_sitter_kotlin", ".swift": "tree_sitter_swift", ".cpp": "tree_sitter_cpp", ".hpp": "tree_sitter_cpp"}


def syntax_errors(path: Path) -> list[str]:
    import tree_sitter

    grammar = importlib.import_module(GRAMMARS[path.suffix])
    tree = tree_sitter.Parser(tree_sitter.Language(grammar.language())).parse(path.read_bytes())
    found: list[str] = []

    def visit(node) -> None:
        if node.type == "ERROR" or node.is_missing:
            found.append(f"{path.name}:{node.start_point[0] + 1}: {node.text[:60]!r}")
        for child in node.children:
            visit(child)

    visit(tree.root_node)
    return found


@pytest.mark.parametrize("variant", ["litert-int8@20ms", "coreml-stateful@20ms", "onnxruntime-fp32@20ms"])
def test_generated_client_parses_and_names_every_tensor_of_its_artifact(released, variant: str) -> None:
    from pipeline.contract import read_contract

    directory = released.bundle.directory / variant
    contract = read_contract(directory)
    sources = sorted((directory / "client").iterdir())
    assert sources
    text = ""
    for source in sources:
        assert not syntax_errors(source), syntax_errors(source)
        text += source.read_text()
    for binding in contract.bindings.values():
        assert json.dumps(binding.name) in text, binding.name
    assert ("stateInModel = true" in text) == contract.state_in_model


def test_explicit_state_swift_client_parses(released, tmp_path: Path) -> None:
    from pipeline.contract import read_contract
    from pipeline.release.clients.swift import generate

    contract = read_contract(released.bundle.directory / "coreml-stateful@20ms")
    explicit = contract.model_copy(update={"state_in_model": False})
    (path,) = generate(explicit, tmp_path)
    assert not syntax_errors(path) and "stateInModel = false" in path.read_text()


def test_a_syntax_error_is_found() -> None:
    # the check above could not fail if the grammar accepted anything
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.kt"
        bad.write_text("class X { fun f( { }\n")
        assert syntax_errors(bad)


HARNESS = r"""
#include <cstdio>
#include "speechport_stream.hpp"
using namespace speechport;
int main(int, char** argv) {
    const std::string dir = argv[1];
    const Npy audio = read_npy(dir + "/audio.npy");
    const Npy features = read_npy(dir + "/input." + std::string(contract::INPUT_CONTRACT_NAME) + ".npy");
    const Npy logits = read_npy(dir + "/output." + std::string(contract::OUTPUT_CONTRACT_NAMES[0]) + ".npy");
    LogMel frontend(contract::N_FFT, contract::WIN_LENGTH, contract::HOP_LENGTH, contract::N_MELS, contract::SAMPLE_RATE,
                    contract::F_MIN, contract::F_MAX, contract::LOG_FLOOR);
    RingBuffer ring(4, contract::CHUNK_SAMPLES);
    std::vector<float> pcm, feature(contract::INPUT.size());
    const size_t steps = audio.shape[0], n = contract::INPUT.size(), block = 160;
    double worst = 0;
    size_t k = 0;
    for (size_t offset = 0; offset < audio.values.size(); offset += block) {
        ring.write(&audio.values[offset], std::min(block, audio.values.size() - offset));
        while (ring.read_chunk(pcm)) {
            frontend.push(pcm, feature, contract::FRAME_STRIDE, contract::FEATURE_STRIDE);
            for (size_t i = 0; i < n; ++i) worst = std::max(worst, (double)std::fabs(feature[i] - features.values[k * n + i]));
            ++k;
        }
    }
    Decoder decoder;
    decoder.reset();
    const size_t m = contract::OUTPUTS[0].size();
    for (size_t s = 0; s < steps; ++s) {
        std::vector<float> values(logits.values.begin() + s * m, logits.values.begin() + (s + 1) * m);
        decoder.push(0, values);
    }
    std::vector<uint8_t> bytes;
    std::vector<float> back, state(contract::STATE_INPUTS[0].size(), 0.25f);
    contract::STATE_INPUTS[0].write(state, bytes);
    contract::STATE_INPUTS[0].read(bytes.data(), back);
    std::printf("%zu %zu %.9g %d\n%s\n", k, ring.dropped_chunks(), worst, back == state, decoder.transcript.c_str());
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_cpp_frontend_and_decoder_reproduce_the_golden_vectors(released, tmp_path: Path) -> None:
    directory = released.bundle.directory / "onnxruntime-fp32@20ms"
    shutil.copy(directory / "client" / "speechport_stream.hpp", tmp_path)
    (tmp_path / "harness.cpp").write_text(HARNESS)
    compiled = subprocess.run(
        ["g++", "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "harness.cpp", "-o", "harness"], cwd=tmp_path, capture_output=True, text=True
    )
    assert compiled.returncode == 0, compiled.stderr
    ran = subprocess.run([str(tmp_path / "harness"), str(directory / "golden")], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    counts, transcript = ran.stdout.split("\n", 1)
    chunks, dropped, worst, roundtrip = counts.split()
    golden = json.loads((directory / "golden" / "golden.json").read_text())
    assert int(chunks) == golden["steps"] and dropped == "0" and roundtrip == "1"
    features = np.load(directory / "golden" / "input.feats.npy")
    assert float(worst) <= 1e-4 * np.abs(features).max(), worst  # float64 frontend both sides: rounding only
    assert transcript.rstrip("\n") == golden["transcript"]
