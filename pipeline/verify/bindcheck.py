"""Does a converted artifact, driven through its contract, reproduce the graph it was converted from?

Every lowering stage runs this on its artifact before publishing it: a binding that maps a tensor to
the wrong name, layout or scale fails the stage at once, instead of showing up minutes later as a
verification failure that looks like quantization error.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import InternalError
from pipeline.session import StreamingSession


def check_reproduces(
    reference: StreamingSession,
    candidate: StreamingSession,
    recorded: dict[str, np.ndarray] | None,
    steps: int,
    bound: float | None,
    artifact: str,
    source: str,
    variant: str,
    where: str,
) -> dict:
    """Outputs of `candidate` against `reference`'s on the same inputs; raises InternalError naming each problem.

    With recorded (chunk, state) pairs: one call per pair. Without: synthetic chunks, the reference
    feeding back its own state and the candidate called on the same state each time.
    Two outputs of one shape bound the wrong way round match each other's reference better than
    their own, whatever the precision; with a `bound` (float artifacts), every output must also stay
    within `bound * max(1, largest |value|)`. Quantized artifacts get no bound here: their accuracy is
    verify's to judge over real speech. A CTC output that is log-probabilities compares as the posteriors it
    encodes, as verify compares it (`metrics.COMPARED_AS_PROBABILITIES`): an fp16 log_softmax puts a class PyTorch
    has at -17 at -103, an error of 86 in a probability below one in ten million.
    """
    from pipeline.verify.metrics import as_probabilities, log_probability_outputs

    spec, names = reference.spec, reference.spec.output_names
    shape = {n: reference.contract.bindings[n].shape for n in names}
    pairs = [(a, b) for a in names for b in names if a != b and shape[a] == shape[b]]
    error, crossed, magnitude = dict.fromkeys(names, 0.0), dict.fromkeys(pairs, 0.0), dict.fromkeys(names, 0.0)
    logp: set[str] = set()
    rng = np.random.default_rng(0)
    count = steps if recorded is None else min(steps, len(recorded[spec.input_names[0]]))
    picks = None if recorded is None else np.linspace(0, len(recorded[spec.input_names[0]]) - 1, count).round().astype(int)
    for k in range(count):
        if picks is not None:
            a = reference.call({n: recorded[n][picks[k]] for n in spec.input_names})  # type: ignore[index]
            b = candidate.call({n: recorded[n][picks[k]] for n in spec.input_names})  # type: ignore[index]
        else:
            scale = 0.1 if spec.frontend.kind == "pcm" else 2.0
            chunk = {i.name: (rng.standard_normal(i.shape) * scale).astype(np.float32) for i in spec.inputs}
            # both start each call from the reference's state: the bound is on one call, not on a random-input trajectory
            feeds, a = reference.advance(chunk)
            b = candidate.call(feeds)
        if k == 0:  # which outputs are log-probabilities: the reference's first call says
            logp = log_probability_outputs(spec, {n: a[n][None] for n in names})
        a, b = ({n: as_probabilities(v[n]) if n in logp else v[n] for n in names} for v in (a, b))
        for n in names:
            error[n] = max(error[n], float(np.abs(a[n] - b[n]).max()))
            magnitude[n] = max(magnitude[n], float(np.abs(a[n]).max()))
        for x, y in pairs:
            crossed[(x, y)] = max(crossed[(x, y)], float(np.abs(a[x] - b[y]).max()))
    problems = [
        f"{x} matches the tensor bound to {y} better ({crossed[(x, y)]:.3g}) than its own ({error[x]:.3g})"
        for x, y in pairs
        if crossed[(x, y)] < 0.5 * error[x]
    ]
    for n in names:
        limit = (np.inf if bound is None else bound) * max(1.0, magnitude[n])
        if not error[n] <= limit:
            b_ = candidate.contract.bindings[n]
            compared = ", compared as probabilities" if n in logp else ""
            problems.append(
                f"{n} ({artifact} tensor {b_.name!r}, shape {list(b_.shape)}, {b_.dtype}{compared}): max abs error {error[n]:.3g} "
                f"against {source} exceeds {limit:.3g} (largest |value| {magnitude[n]:.3g})"
            )
    if problems:
        mode = "recorded calibration pairs" if recorded is not None else "synthetic chunks on the reference's state"
        raise InternalError(f"{variant} ({where}): the {artifact} does not reproduce {source} over {count} {mode}: " + "; ".join(problems))
    mode = "recorded_pairs" if recorded is not None else "synthetic_on_reference_state"
    return {"mode": mode, "calls": count, "max_abs": error, "max_abs_reference": magnitude}
