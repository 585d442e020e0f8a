"""Bring your own model (issue 9, items 3 and 4): a raw-PCM VAD with 512-sample (32 ms) chunks and a sigmoid
probability output, declared by an explicit `io:` in its manifest, through onnxruntime and LiteRT fp32.

The model lives here: a framing conv over each chunk with the last 512 samples carried as state, a GRU with
explicit gates (the TorchScript exporter cannot take nn.GRUCell), a probability head and a two-class logits head
whose class 1 is declared positive. It is initialised from a fixed seed, not trained: what is tested is the
pipeline, which must carry a chunk that is no whole number of 10 ms hops and judge decisions at a threshold.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline import dag
from pipeline.cache import Artifact
from pipeline.cli import main
from tests.conftest import CORPUS, write_manifest

CHUNK, WINDOW, HOP = 512, 768, 256  # 2 frames per chunk; each frame sees 768 samples, so 512 are carried
FILTERS, HIDDEN = 16, 16


class PcmProbabilityVAD(nn.Module):
    def __init__(self, filters: int = FILTERS, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.hidden = hidden
        self.framing = nn.Conv1d(1, filters, WINDOW, stride=HOP, bias=False)
        self.proj = nn.Linear(filters, hidden)
        self.w_ih = nn.Parameter(torch.randn(hidden, 3 * hidden) / hidden**0.5)
        self.w_hh = nn.Parameter(torch.randn(hidden, 3 * hidden) / hidden**0.5)
        self.b = nn.Parameter(torch.zeros(3 * hidden))
        self.prob_head = nn.Linear(hidden, 1)
        self.logits_head = nn.Linear(hidden, 2)
        with torch.no_grad():  # spread the probabilities, so few frames sit within rounding of the threshold
            self.prob_head.weight.mul_(4.0)

    def _features(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(torch.log(torch.abs(frames) + 1e-3)))

    def _cell(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        n = self.hidden
        gx, gh = x @ self.w_ih + self.b, h @ self.w_hh
        r = torch.sigmoid(gx[:, 0:n] + gh[:, 0:n])
        z = torch.sigmoid(gx[:, n : 2 * n] + gh[:, n : 2 * n])
        candidate = torch.tanh(gx[:, 2 * n : 3 * n] + r * gh[:, 2 * n : 3 * n])
        return candidate + z * (h - candidate)

    def _heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(self.prob_head(hidden)), self.logits_head(hidden)

    def forward(self, pcm: torch.Tensor, tail_in: torch.Tensor, h_in: torch.Tensor):
        """pcm [512], tail [512], h [1, hidden] -> speech_prob [2, 1], vad_logits [2, 2], tail, h."""
        window = torch.cat([tail_in, pcm], dim=0)
        frames = self.framing(window.reshape(1, 1, 2 * CHUNK)).squeeze(0).t()  # [2, filters]
        x, h, steps = self._features(frames), h_in, []
        for t in range(x.shape[0]):
            h = self._cell(x[t : t + 1], h)
            steps.append(h)
        prob, logits = self._heads(torch.cat(steps, dim=0))
        return prob, logits, window[CHUNK:], h

    def forward_batch(self, pcm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.framing(torch.nn.functional.pad(pcm, (WINDOW - HOP, 0)).reshape(1, 1, -1)).squeeze(0).t()
        x, h, steps = self._features(frames), torch.zeros(1, self.hidden), []
        for t in range(x.shape[0]):
            h = self._cell(x[t : t + 1], h)
            steps.append(h)
        return self._heads(torch.cat(steps, dim=0))


def build() -> PcmProbabilityVAD:
    return PcmProbabilityVAD()


IO = {
    "chunk_samples": CHUNK,
    "frontend": {"kind": "pcm"},
    "inputs": [{"name": "pcm", "shape": [CHUNK], "time_axis": 0}],
    "states": [
        {"input": "tail_in", "output": "tail_out", "shape": [CHUNK]},
        {"input": "h_in", "output": "h_out", "shape": [1, HIDDEN]},
    ],
    "outputs": [
        {"name": "speech_prob", "shape": [2, 1], "time_axis": 0, "kind": "probability", "threshold": 0.5},
        {"name": "vad_logits", "shape": [2, 2], "time_axis": 0, "kind": "decision_logits", "positive_classes": [1]},
    ],
    "decoder": {"kind": "decision", "classes": ["silence", "speech"]},
}


def _widest_gap_near_the_median(values: torch.Tensor) -> float:
    """A point between two consecutive values of the middle fifth, where they are furthest apart.

    Moving a decision boundary there splits the frames about evenly with none within rounding of it: fp32 must
    agree on every frame, and a frame at 1e-7 from the threshold may rightly fall on either side."""
    ordered = values.double().flatten().sort().values
    low, high = int(0.4 * len(ordered)), int(0.6 * len(ordered))
    gaps = ordered[low + 1 : high] - ordered[low : high - 1]
    k = low + int(gaps.argmax())
    return float((ordered[k] + ordered[k + 1]) / 2)


def centred_vad() -> PcmProbabilityVAD:
    """Seeded weights, with each head's bias moved so that about half the frames of the streamed speech are
    positive: an untrained head decides the same way almost everywhere, and agreement with it would prove little."""
    from pipeline.audio.corpus import load_split

    torch.manual_seed(0)
    model = build().eval()
    audio = np.concatenate([u.audio for u in load_split(CORPUS, "verification")])[: 20 * 16_000]
    with torch.no_grad():
        prob, logits = model.forward_batch(torch.from_numpy(audio.astype(np.float32)))
        model.prob_head.bias -= _widest_gap_near_the_median(torch.logit(prob.double()))
        model.logits_head.bias[1] -= _widest_gap_near_the_median(logits[:, 1] - logits[:, 0])
    return model


def vad_manifest(tmp: Path) -> dict:
    from safetensors.torch import save_file

    save_file(centred_vad().state_dict(), str(tmp / "vad.safetensors"))
    return {
        "name": "byo-vad",
        "model": {"factory": "tests.targets.test_byo_pcm_vad:build", "checkpoint": "vad.safetensors"},
        "io": IO,
        "chunk_samples": [CHUNK],
        "backends": {"onnxruntime": ["fp32"], "litert": ["fp32"]},
        "verification": {"corpus": str(CORPUS), "split": "verification", "max_seconds": 20},
    }


@pytest.fixture(scope="module")
def vad_build(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("byo-vad")
    path = write_manifest(tmp / "vad.yaml", **vad_manifest(tmp))
    patch = pytest.MonkeyPatch()
    patch.setenv("SPEECHPORT_CACHE", str(tmp / "cache"))
    try:
        code = main(["build", str(path), "--out", str(tmp / "out"), "--jobs", "1"])
    finally:
        patch.undo()
    return {"tmp": tmp, "path": path, "code": code, "out": tmp / "out"}


def test_a_512_sample_pcm_model_builds_verifies_and_reports_decision_agreement(vad_build: dict, capsys: pytest.CaptureFixture) -> None:
    assert vad_build["code"] == 0
    out = vad_build["out"]
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == 3
    variants = {v["name"]: v for v in report["variants"]}
    assert set(variants) == {"onnxruntime-fp32@512smp", "litert-fp32@512smp"}
    for v in variants.values():
        assert v["passed"], v["failures"]
        assert (v["chunk"], v["chunk_samples"], v["chunk_ms"], v["sample_rate"]) == ("512smp", 512, 32.0, 16000)
        assert v["audio_seconds"] == v["steps"] * 0.032
        prob, logits = v["outputs"]["speech_prob"], v["outputs"]["vad_logits"]
        # a probability's range is at most 1: its relative bound is no looser than the absolute one
        assert 0 < prob["reference_max_abs"] <= 1
        assert prob["decision_rule"] == "p >= 0.5" and prob["threshold"] == 0.5
        assert prob["decision_frames"] == logits["decision_frames"] == 2 * v["steps"]
        assert prob["decision_agreement"] == logits["decision_agreement"] == 1.0
        assert logits["binary_decision_agreement"] == 1.0
        # decisions are taken on both sides of the threshold, so agreeing on every frame says something
        assert 0.2 < prob["reference_positive_rate"] < 0.8 and 0.2 < logits["reference_positive_rate"] < 0.8
        assert 0 <= prob["decision_accuracy"] <= 1
        assert v["decision_agreement"] == 1.0 and v["binary_decision_agreement"] == 1.0
        assert v["decision_output"] in ("speech_prob", "vad_logits")
    markdown = (out / "report.md").read_text()
    assert "## Decisions" in markdown
    assert "| litert-fp32@512smp | speech_prob | p >= 0.5 |" in markdown
    assert "| onnxruntime-fp32@512smp | vad_logits | arg-max; positive: classes [1] |" in markdown


def test_the_contract_states_512_samples_and_32_ms_and_how_to_decide(vad_build: dict) -> None:
    for variant in ("onnxruntime-fp32@512smp", "litert-fp32@512smp"):
        contract = json.loads((vad_build["out"] / variant / "contract.json").read_text())
        assert contract["schema"] == 3
        stream = contract["stream"]
        assert (stream["chunk_samples"], stream["chunk_ms"], stream["frontend"]["sample_rate"]) == (512, 32.0, 16000)
        assert stream["outputs"][0]["kind"] == "probability" and stream["outputs"][0]["threshold"] == 0.5
        usage = contract["usage"]
        assert "Read 512 samples (32 ms at 16000 Hz, mono) from the microphone." in usage
        assert any("'speech_prob'" in step and "speech when p >= 0.5, else silence" in step for step in usage), usage
        assert any("'vad_logits'" in step and "positive when that class is one of [1] (speech)" in step for step in usage), usage


def _offset_probability(source: Path, destination: Path, offset: float) -> None:
    """Copy the ONNX artifact with `offset` added to speech_prob: an int8 file with a wrong zero point, say."""
    import onnx
    from onnx import helper, numpy_helper

    shutil.copytree(source, destination)
    model = onnx.load(str(destination / "model.onnx"))
    for node in model.graph.node:
        node.output[:] = ["speech_prob_raw" if name == "speech_prob" else name for name in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(offset, np.float32), "broken_offset"))
    model.graph.node.append(helper.make_node("Add", ["speech_prob_raw", "broken_offset"], ["speech_prob"]))
    onnx.save(model, str(destination / "model.onnx"))


@pytest.mark.parametrize("preset", ["fp32", "fp16", "int16", "int8"])
def test_a_probability_off_by_0996_fails_the_gates_of_every_precision(vad_build: dict, tmp_path: Path, preset: str) -> None:
    """Once in this project an int8 probability file off by 0.996 reported PASSED: it must fail on magnitude."""
    from pipeline import execute as executor
    from pipeline.cache import Cache
    from pipeline.manifest import load_manifest
    from pipeline.plan import plan
    from pipeline.verify.gates import FLOAT16, FLOAT32, INT8_ACTIVATIONS, INT16_ACTIVATIONS
    from pipeline.verify.stage import RESULT_FILE, VerifyStage

    graph = plan(load_manifest(vad_build["path"]))
    built = executor.execute(graph, Cache(vad_build["tmp"] / "cache"), "byo-vad")  # every stage a cache hit
    node = graph.nodes["verify:onnxruntime-fp32@512smp"]
    _offset_probability(built["simplify@512smp"].path, tmp_path / "broken", 0.996)
    inputs = {role: built[dep] for role, dep in node.inputs} | {"model": Artifact("simplify", "x", tmp_path / "broken", "x")}
    preset_tolerance = {"fp32": FLOAT32, "fp16": FLOAT16, "int16": INT16_ACTIVATIONS, "int8": INT8_ACTIVATIONS}[preset]
    config = node.config.model_copy(update={"default_tolerance": preset_tolerance, "tolerance_override": None})
    out = tmp_path / "verify"
    out.mkdir()
    VerifyStage.run(config, inputs, out, dag.StageContext("verify"))
    result = json.loads((out / RESULT_FILE).read_text())
    assert not result["passed"]
    failures = result["failures"]
    assert any(f.startswith("speech_prob: max abs error") for f in failures), failures
    assert any(f.startswith("speech_prob: SQNR") for f in failures), failures
    # the logits head is untouched: its decisions still agree, and only the probability is blamed
    assert result["outputs"]["vad_logits"]["decision_agreement"] == 1.0
    assert not any(f.startswith("vad_logits") for f in failures), failures
    assert result["decision_output"] == "speech_prob" and result["decision_agreement"] < 1.0
