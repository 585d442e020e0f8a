"""Each model card's verification figure was measured, and the checkpoint still meets it.

The check here is independent of models/train.py: it loads the checkpoint the way the pipeline
does, computes the frontend itself and decodes with the pipeline's CTC decoder.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from pipeline.audio.corpus import load_split, speech_mask
from pipeline.audio.ctc import ctc_greedy, edit_distance, normalize_text
from pipeline.audio.frontend import logmel_batch
from pipeline.manifest import ModelRef
from pipeline.model import build_model
from tests.conftest import CORPUS, REPO

ZOO = ["lstm_ctc", "dscnn_ctc", "conformer_ctc", "kws"]


def card_figure(name: str) -> float:
    """The bold percentage in the card's Verification section, as a fraction."""
    card = (REPO / "models" / f"{name}.md").read_text()
    section = card[card.index("## Verification") :]
    return float(re.search(r"\*\*([\d.]+) %\*\*", section).group(1)) / 100


@pytest.mark.parametrize("name", ZOO)
def test_card_figure_holds(name: str) -> None:
    model = build_model(ModelRef(factory=f"models.{name}:build", checkpoint=REPO / "models" / "checkpoints" / f"{name}.safetensors"))
    spec = model.streaming_spec(20)
    utterances = load_split(CORPUS, "verification")
    claimed = card_figure(name)
    with torch.no_grad():
        if spec.frontend.kind == "logmel":
            edits = chars = 0
            for u in utterances:
                (logits,) = model.forward_batch(torch.from_numpy(logmel_batch(u.audio, spec.frontend)))
                ref = normalize_text(u.text)
                edits += edit_distance(ref, normalize_text(ctc_greedy(logits.numpy(), spec.decoder.vocabulary)))
                chars += len(ref)
            measured = edits / chars
            assert measured <= claimed + 5e-5, f"{name}: CER {measured:.4%} is worse than the card's {claimed:.2%}"
            assert measured < 0.5
        else:
            correct = total = 0
            for u in utterances:
                usable = len(u.audio) // 160 * 160
                (logits,) = model.forward_batch(torch.from_numpy(u.audio[:usable].astype(np.float32)))
                labels = speech_mask(u)[:usable].reshape(-1, 160).mean(axis=1) >= 0.5
                predicted = logits.numpy().argmax(-1)
                correct += int((predicted == labels).sum())
                total += len(labels)
            measured = correct / total
            assert measured >= claimed - 5e-5, f"{name}: frame accuracy {measured:.4%} is below the card's {claimed:.2%}"
            assert measured > 0.9
