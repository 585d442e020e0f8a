"""The conversion self-check: an artifact that does not reproduce its source graph fails its stage, and a
log-probability output is held as the posteriors it encodes (as verification holds it)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.errors import InternalError
from pipeline.spec import StreamSpec
from pipeline.verify.bindcheck import check_reproduces

SPEC = StreamSpec.model_validate(
    {
        "chunk_ms": 20,
        "frontend": {"kind": "logmel"},
        "inputs": [{"name": "feats", "shape": [2, 4], "time_axis": 0}],
        "outputs": [{"name": "log_probs", "shape": [2, 3], "time_axis": 0, "kind": "ctc_logits"}],
        "decoder": {"kind": "ctc_greedy", "vocabulary": "ab"},
    }
)


class _Session:
    """Log-softmax of a fixed projection of the chunk; `floor` clamps log-probabilities from below, as fp16 does
    where exp underflows (PyTorch -17, Core ML fp16 -103), and `offset` moves every one of them."""

    def __init__(self, floor: float | None = None, offset: float = 0.0) -> None:
        self.spec, self.floor, self.offset = SPEC, floor, offset
        self.contract = SimpleNamespace(bindings={"log_probs": SimpleNamespace(name="log_probs", shape=(2, 3), dtype="float32")})

    def call(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        logits = feeds["feats"][:, :3] * 10.0  # classes far apart: the smallest at about e^-40
        log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        if self.floor is not None:
            log_probs = np.where(log_probs < -17.0, self.floor, log_probs)
        return {"log_probs": (log_probs + self.offset).astype(np.float32)}

    def advance(self, chunk: dict[str, np.ndarray]) -> tuple[dict, dict]:
        return chunk, self.call(chunk)


def test_log_probabilities_compare_as_the_probabilities_they_encode() -> None:
    # as log-probabilities this candidate is off by ~86; as probabilities by less than 1e-7
    check = check_reproduces(_Session(), _Session(floor=-103.0), None, 16, 0.03, ".mlpackage", "PyTorch", "v", "w")
    assert check["max_abs"]["log_probs"] < 1e-6
    # every log-probability off by log(2): each probability doubled or halved, which still fails, naming the comparison
    with pytest.raises(InternalError, match=r"log_probs \(.mlpackage tensor 'log_probs', shape \[2, 3\], float32, compared as probabilities\)"):
        check_reproduces(_Session(), _Session(offset=np.log(2.0)), None, 16, 0.03, ".mlpackage", "PyTorch", "v", "w")
