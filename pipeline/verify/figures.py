"""The closed-loop figures of one stream against the PyTorch reference's, shared by verification and by the
quantization search (which judges each candidate recipe the way verification will judge the variant)."""

from __future__ import annotations

import numpy as np


def closed_loop_figures(spec, stream, reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray], reference_transcript: str | None, window: int) -> tuple[dict, dict, dict]:
    """The closed-loop figures of one stream against the reference's: per non-state output (`compare`, plus the
    decision figures of decision and probability outputs), the transcript's CER against the truth and the
    reference's (CTC outputs), and the worst decisions. Returns (metrics per output, extra figures, record entries)."""
    from pipeline.audio.ctc import cer, ctc_greedy
    from pipeline.audio.stream import truth_cer
    from pipeline.spec import DECISION_KINDS
    from pipeline.verify.decisions import decision_figures, worst_decisions
    from pipeline.verify.metrics import COMPARED_AS_PROBABILITIES, as_probabilities, compare, log_probability_outputs, per_frame

    steps = len(stream.chunks)
    # log-probabilities compare as the posteriors they encode (metrics.COMPARED_AS_PROBABILITIES)
    logp = log_probability_outputs(spec, reference)
    metrics = {
        o.name: compare(as_probabilities(reference[o.name]), as_probabilities(outputs[o.name]), steps, window) | {"compared_as": COMPARED_AS_PROBABILITIES}
        if o.name in logp
        else compare(reference[o.name], outputs[o.name], steps, window)
        for o in spec.outputs
    }
    extra: dict[str, float | str] = {}
    record: dict = {}
    decided: dict[str, dict] = {}
    for o in spec.outputs:
        if o.kind == "ctc_logits" and spec.decoder is not None and spec.decoder.kind == "ctc_greedy":
            frames = per_frame(outputs[o.name], o.time_axis)
            transcript = ctc_greedy(frames, spec.decoder.vocabulary, spec.decoder.blank)
            truth = truth_cer(stream, frames, spec.decoder.vocabulary, spec.decoder.blank, spec.chunk_samples * steps // len(frames))
            if truth is not None:  # None: no file has a transcript
                extra["cer"] = truth
                reference_frames = per_frame(reference[o.name], o.time_axis)
                reference_truth = truth_cer(stream, reference_frames, spec.decoder.vocabulary, spec.decoder.blank, spec.chunk_samples * steps // len(frames))
                extra["cer_increase"] = truth - reference_truth
            if reference_transcript is not None:
                extra["cer_vs_reference"] = cer(reference_transcript, transcript)
            record["transcript"] = transcript
        elif o.kind in DECISION_KINDS:
            decided[o.name] = decision_figures(o, outputs[o.name], reference[o.name], stream.speech, steps * spec.chunk_samples)
            metrics[o.name] |= decided[o.name]
    extra |= worst_decisions(decided)
    return metrics, extra, record
