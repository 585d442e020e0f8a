"""Per-frame decisions of `decision_logits` and `probability` outputs, and how often an artifact's agree.

A decision_logits output decides by arg-max over its last axis; when it declares `positive_classes`,
the frame is also positive or negative (the arg-max is one of them or not). A probability output
holds one value p per frame and decides p >= threshold. Agreement is the fraction of frames whose
decision equals the reference's; accuracy compares the positive decision with the corpus's
speech/non-speech label of the frame (the majority of the samples the frame covers).
"""

from __future__ import annotations

import numpy as np

from pipeline.audio.stream import frame_labels
from pipeline.spec import OutputSpec
from pipeline.verify.metrics import per_frame


def frame_values(outputs: np.ndarray, output: OutputSpec) -> np.ndarray:
    """[steps, *chunk_shape] -> [frames, classes] for decision_logits, [frames] for a probability, frames in time order."""
    if output.kind == "probability":
        return np.moveaxis(outputs, output.time_axis + 1, 1).reshape(-1)
    return per_frame(outputs, output.time_axis)


def decisions(outputs: np.ndarray, output: OutputSpec) -> np.ndarray:
    """Per frame: the arg-max class (decision_logits) or p >= threshold (probability)."""
    values = frame_values(outputs, output)
    if output.kind == "probability":
        return values >= output.threshold
    return values.argmax(axis=-1)


def positive(decided: np.ndarray, output: OutputSpec) -> np.ndarray | None:
    """Per frame, whether the decision is positive; None for a decision_logits output with no positive class.

    Without `positive_classes`, a two-class output's class 1 is positive (speech in ('silence', 'speech')).
    """
    if output.kind == "probability":
        return decided
    classes = output.positive_classes
    if classes is None and output.shape and output.shape[-1] == 2:
        classes = (1,)
    return None if classes is None else np.isin(decided, classes)


def agreement(got: np.ndarray, expected: np.ndarray) -> float:
    return float((got == expected).mean()) if len(expected) else 1.0


def decision_figures(output: OutputSpec, got: np.ndarray, reference: np.ndarray, speech: np.ndarray | None, samples: int) -> dict:
    """One output's decision figures: artifact outputs `got` against the reference's, both [steps, *shape].

    `speech`: bool per streamed sample, None for audio without labelled speech regions; `samples`: samples streamed in the calls (steps x chunk_samples).
    """
    mine, theirs = decisions(got, output), decisions(reference, output)
    figures: dict = {"decision_rule": output.decision_rule, "decision_frames": len(theirs), "decision_agreement": agreement(mine, theirs)}
    if output.kind == "probability":
        figures["threshold"] = output.threshold
    my_positive, their_positive = positive(mine, output), positive(theirs, output)
    if output.positive_classes is not None:
        figures["binary_decision_agreement"] = agreement(my_positive, their_positive)
    if speech is not None and my_positive is not None and len(theirs) and samples % len(theirs) == 0:
        labels = frame_labels(speech, len(theirs), samples // len(theirs))
        figures["decision_accuracy"] = agreement(my_positive, labels)
        figures["reference_decision_accuracy"] = agreement(their_positive, labels)
        figures["positive_rate"] = float(my_positive.mean())
        figures["reference_positive_rate"] = float(their_positive.mean())
    return figures


def worst_decisions(per_output: dict[str, dict]) -> dict:
    """The variant-level figures: those of the output whose decisions agree least, and the least binary agreement."""
    if not per_output:
        return {}
    name, figures = min(per_output.items(), key=lambda item: item[1]["decision_agreement"])
    worst = {"decision_agreement": figures["decision_agreement"], "decision_output": name}
    for key in ("decision_accuracy", "reference_decision_accuracy"):
        if key in figures:
            worst[key] = figures[key]
    binary = [f["binary_decision_agreement"] for f in per_output.values() if "binary_decision_agreement" in f]
    if binary:
        worst["binary_decision_agreement"] = min(binary)
    return worst
