"""Decisions of decision_logits and probability outputs: agreement at the threshold, the binary decision of
positive classes, and a probability judged by its error's magnitude whatever its decisions do."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.errors import UserError
from pipeline.spec import OutputSpec, StreamSpec
from pipeline.verify.decisions import decision_figures, decisions, worst_decisions
from pipeline.verify.gates import FLOAT16, FLOAT32, INT8_ACTIVATIONS, INT16_ACTIVATIONS, judge
from pipeline.verify.metrics import compare

PRESETS = {"fp32": FLOAT32, "fp16": FLOAT16, "int16": INT16_ACTIVATIONS, "int8": INT8_ACTIVATIONS}


def probability(shape: tuple[int, ...] = (2, 1), threshold: float | None = None) -> OutputSpec:
    extra = {} if threshold is None else {"threshold": threshold}
    return OutputSpec(name="p", shape=shape, time_axis=0, kind="probability", **extra)


def test_a_probability_decides_at_its_threshold_per_frame_in_time_order() -> None:
    # 3 calls x 2 frames; p == threshold counts as positive
    reference = np.array([0.1, 0.5, 0.9, 0.49, 0.7, 0.2], np.float32).reshape(3, 2, 1)
    got = np.array([0.1, 0.49, 0.9, 0.5, 0.7, 0.2], np.float32).reshape(3, 2, 1)
    output = probability()
    assert output.threshold == 0.5 and output.decision_rule == "p >= 0.5"
    assert decisions(reference, output).tolist() == [False, True, True, False, True, False]
    speech = np.repeat([False, True, True, False, True, False], 4)  # 4 samples per frame
    figures = decision_figures(output, got, reference, speech, samples=24)
    assert figures["decision_frames"] == 6
    assert figures["decision_agreement"] == pytest.approx(4 / 6)  # frames 1 and 3 flip
    assert figures["reference_decision_accuracy"] == 1.0 and figures["decision_accuracy"] == pytest.approx(4 / 6)
    assert figures["positive_rate"] == figures["reference_positive_rate"] == pytest.approx(3 / 6)
    assert "binary_decision_agreement" not in figures
    # another threshold, another decision; shapes [frames] and [1, 1] hold one value per frame as well
    strict = decision_figures(probability(threshold=0.75), got, reference, speech, samples=24)
    assert strict["decision_agreement"] == 1.0 and strict["decision_rule"] == "p >= 0.75"
    flat = decision_figures(probability(shape=(2,)), got.reshape(3, 2), reference.reshape(3, 2), speech, samples=24)
    assert flat["decision_agreement"] == pytest.approx(4 / 6)
    one = OutputSpec(name="p", shape=(1, 1), kind="probability")
    assert decision_figures(one, got.reshape(6, 1, 1), reference.reshape(6, 1, 1), speech, samples=24)["decision_frames"] == 6


def test_positive_classes_add_agreement_on_the_binary_decision() -> None:
    output = OutputSpec(name="events", shape=(2, 3), time_axis=0, kind="decision_logits", positive_classes=(1, 2))
    one_hot = np.eye(3, dtype=np.float32)
    reference = one_hot[[0, 1, 2, 2, 0, 1]].reshape(3, 2, 3)
    got = one_hot[[0, 2, 1, 2, 1, 1]].reshape(3, 2, 3)  # 1 <-> 2 swaps keep the binary decision; frame 4 does not
    figures = decision_figures(output, got, reference, np.zeros(24, bool), samples=24)
    assert figures["decision_agreement"] == pytest.approx(3 / 6)
    assert figures["binary_decision_agreement"] == pytest.approx(5 / 6)
    assert figures["decision_rule"] == "arg-max; positive: classes [1, 2]"
    # a two-class output without positive classes: class 1 is positive for the speech labels, no binary figure
    binary = OutputSpec(name="vad", shape=(2, 2), time_axis=0, kind="decision_logits")
    two = np.eye(2, dtype=np.float32)[[0, 1, 1, 0, 0, 1]].reshape(3, 2, 2)
    figures = decision_figures(binary, two, two, np.repeat([False, True, True, False, False, True], 4), samples=24)
    assert figures["decision_agreement"] == figures["decision_accuracy"] == 1.0 and "binary_decision_agreement" not in figures


def test_the_variant_reports_its_least_agreeing_output() -> None:
    per_output = {
        "p": {"decision_agreement": 0.99, "decision_accuracy": 0.8, "reference_decision_accuracy": 0.81},
        "events": {"decision_agreement": 0.97, "binary_decision_agreement": 0.995},
    }
    assert worst_decisions(per_output) == {"decision_agreement": 0.97, "decision_output": "events", "binary_decision_agreement": 0.995}
    assert worst_decisions({}) == {}


def _probability_metrics(offset: float) -> tuple[dict, np.ndarray, np.ndarray]:
    """A VAD-like reference (0.05 in silence, 0.95 in speech, some in between) and an artifact off by `offset`."""
    rng = np.random.default_rng(0)
    reference = np.where(rng.random(4000) < 0.5, 0.05, 0.95) + rng.uniform(-0.04, 0.04, 4000)
    got = reference + offset
    m = compare(reference[:, None], got[:, None], len(reference), 500)
    m |= {"one_step_max_abs": m["max_abs"], "one_step_reference_max_abs": m["reference_max_abs"]}
    return m, reference.reshape(-1, 2, 1), got.reshape(-1, 2, 1)


@pytest.mark.parametrize("offset", [0.3, 0.996])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_probability_off_by_a_consistent_amount_fails_every_default_even_when_decisions_agree(offset: float, preset: str) -> None:
    m, reference, got = _probability_metrics(offset)
    output = probability()
    m |= decision_figures(output, got, reference, np.zeros(8000, bool), samples=8000)
    assert m["reference_max_abs"] <= 1  # a probability's range: its relative bound is no looser than the absolute one
    if offset == 0.3:
        assert m["decision_agreement"] == 1.0  # every frame keeps its side of 0.5 ...
        assert m["cosine"] > 0.9  # ... and the direction barely moves
    failures = judge({"p": m}, {}, PRESETS[preset], {})
    # ... but the magnitude bounds catch it
    assert any(f.startswith("p: SQNR") for f in failures), failures
    if offset == 0.996:
        assert any(f.startswith("p: max abs error") for f in failures), failures
        assert any(f.startswith("p: decisions (p >= 0.5) agree with PyTorch on") for f in failures), failures


def test_decision_agreement_is_judged_per_output_naming_it() -> None:
    m, reference, _ = _probability_metrics(0.0)
    m |= {"decision_agreement": 0.9, "decision_rule": "p >= 0.5", "decision_frames": 4000}
    failures = judge({"speech_prob": m}, {}, INT8_ACTIVATIONS, {})
    assert failures == ["speech_prob: decisions (p >= 0.5) agree with PyTorch on 0.9000 of 4000 frames, below 0.95"]
    assert not judge({"speech_prob": m | {"decision_agreement": 0.96}}, {}, INT8_ACTIVATIONS, {})


def test_output_kinds_declare_only_their_own_decision_fields() -> None:
    with pytest.raises(ValidationError, match="threshold applies to kind 'probability' only"):
        OutputSpec(name="y", shape=(2, 29), kind="ctc_logits", threshold=0.5)
    with pytest.raises(ValidationError, match="positive_classes applies to kind 'decision_logits' only"):
        OutputSpec(name="p", shape=(2, 1), kind="probability", positive_classes=(1,))
    with pytest.raises(ValidationError, match=r"positive_classes \[3\] are not classes of its last axis: expected 0..2"):
        OutputSpec(name="e", shape=(2, 3), kind="decision_logits", positive_classes=(1, 3))
    with pytest.raises(ValidationError, match="lists all 2 classes"):
        OutputSpec(name="e", shape=(2, 2), kind="decision_logits", positive_classes=(0, 1))
    with pytest.raises(ValidationError, match=r"one value per frame: expected size 1 on every axis but time_axis 0, got shape \[2, 2\]"):
        OutputSpec(name="p", shape=(2, 2), time_axis=0, kind="probability")
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        OutputSpec(name="p", shape=(2, 1), time_axis=0, kind="probability", threshold=1.5)
    assert OutputSpec(name="y", shape=(2, 29)).threshold is None
    spec = {
        "chunk_samples": 512,
        "frontend": {"kind": "pcm"},
        "inputs": [{"name": "pcm", "shape": [512], "time_axis": 0}],
        "outputs": [{"name": "p", "shape": [1, 1], "kind": "probability"}],
    }
    with pytest.raises(ValidationError, match="a probability output's decision has two classes"):
        StreamSpec.model_validate(spec | {"decoder": {"kind": "decision", "classes": ["a", "b", "c"]}})
    assert StreamSpec.model_validate(spec | {"decoder": {"kind": "decision", "classes": ["silence", "speech"]}})


def test_a_reference_probability_outside_0_1_is_the_models_error() -> None:
    from pipeline.verify.reference import check_probabilities

    spec = StreamSpec.model_validate(
        {
            "chunk_samples": 512,
            "frontend": {"kind": "pcm"},
            "inputs": [{"name": "pcm", "shape": [512], "time_axis": 0}],
            "outputs": [{"name": "logits", "shape": [1, 2]}, {"name": "p", "shape": [1, 1], "kind": "probability"}],
        }
    )
    check_probabilities(spec, {"logits": np.array([-3.0, 4.0]), "p": np.array([0.0, 1.0])})
    with pytest.raises(UserError, match=r"'p' is declared a probability \(values in \[0, 1\]\) but .* from -0.5 to 2") as caught:
        check_probabilities(spec, {"logits": np.zeros(2), "p": np.array([-0.5, 2.0])})
    assert caught.value.where == "outputs[1].kind"
    with pytest.raises(UserError):
        check_probabilities(spec, {"logits": np.zeros(2), "p": np.array([np.nan])})
