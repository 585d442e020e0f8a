"""Greedy CTC decoding and character error rate."""

from __future__ import annotations

import numpy as np


def ctc_greedy(logits: np.ndarray, vocabulary: str, blank: int = 0) -> str:
    """logits [T, C] -> text: arg-max per frame, merge repeats, drop blanks.

    Class `blank` is the blank; the others map to `vocabulary` in order, skipping the blank index.
    """
    best = np.asarray(logits).argmax(axis=-1)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    symbols = [int(c) for c in best[keep] if c != blank]
    return "".join(vocabulary[c - 1 if c > blank else c] for c in symbols)


def edit_distance(ref: str, hyp: str) -> int:
    """Levenshtein distance, O(len(ref) * len(hyp)) time, O(len(hyp)) memory."""
    if not ref:
        return len(hyp)
    previous = np.arange(len(hyp) + 1)
    hyp_codes = np.frombuffer(hyp.encode("utf-32-le"), dtype=np.uint32) if hyp else np.zeros(0, np.uint32)
    for i, ch in enumerate(ref, start=1):
        substitution = previous[:-1] + (hyp_codes != ord(ch))
        current = np.empty_like(previous)
        current[0] = i
        current[1:] = np.minimum(previous[1:] + 1, substitution)
        # insertions chain left to right: a running minimum of (cost - index)
        current = np.minimum.accumulate(current - np.arange(len(current))) + np.arange(len(current))
        previous = current
    return int(previous[-1])


def normalize_text(text: str) -> str:
    return " ".join(text.split())


def cer(ref: str, hyp: str) -> float:
    """Character error rate of `hyp` against `ref`, after whitespace normalization."""
    ref, hyp = normalize_text(ref), normalize_text(hyp)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
