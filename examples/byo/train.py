"""Train a bring-your-own example's checkpoint on the synthesised corpus: python examples/byo/train.py EXAMPLE

The examples stand for the models users bring, and those are trained. An untrained recurrent net is not
one of them: with random weights the byo LSTMCell recognizer is chaotic, so the smallest perturbation
sends its transcript elsewhere (Core ML's fp16 compute alone, with nothing quantized, moved it 7.3 CER
points from PyTorch's over the verification split) and no check of a quantized file means anything on it.

Each example trains as its users would call it on a whole utterance: its own `forward`, from zero state,
on a batch of padded log-mel utterances [B, T, 80] (the model normalises its input itself), with CTC on
the characters. Seeded, one CPU thread, deterministic; the training set is the 60-minute corpus
`artifacts/corpus-train` (`make corpus`), the figure printed is the greedy CER over whole utterances of
`models/corpus/verification`. Writes `<example>/weights.safetensors` (with the recipe and the figure in its
metadata); the other examples keep their seeded initialisation (`make_checkpoints.py`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from models.train import TRAIN_CORPUS, SYNTH_COMMAND, VERIFY_CORPUS, load_corpus, make_batches, pad, prepare  # noqa: E402

VOCABULARY = " 'abcdefghijklmnopqrstuvwxyz"  # the examples' decoder: class 0 is the blank, class i is VOCABULARY[i - 1]


def _cell(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    zeros = torch.zeros(x.shape[0], model.cell.hidden_size)
    return model(x, zeros, zeros.clone())[0]


# example -> (module, factory, whole-utterance call returning log-probabilities [B, T, classes], epochs, learning rate)
EXAMPLES: dict[str, tuple[str, str, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor], int, float]] = {
    "lstmcell_logmel": ("cell_recognizer", "build", _cell, 30, 3e-3),
}
BATCH_FRAMES = 4000


def targets(text: str) -> torch.Tensor:
    return torch.tensor([VOCABULARY.index(ch) + 1 for ch in " ".join(text.split())], dtype=torch.long)


def evaluate(model: torch.nn.Module, call, items: list[dict]) -> dict:
    from pipeline.audio.ctc import ctc_greedy, edit_distance, normalize_text

    model.eval()
    edits = chars = 0
    with torch.no_grad():
        for it in items:
            log_probs = call(model, it["x"][None])[0]
            ref, hyp = normalize_text(it["text"]), normalize_text(ctc_greedy(log_probs.numpy(), VOCABULARY))
            edits += edit_distance(ref, hyp)
            chars += len(ref)
    return {"cer": edits / chars, "utterances": len(items), "ref_chars": chars}


def train(example: str, epochs: int | None, seed: int) -> None:
    from safetensors.torch import save_file

    module_name, factory, call, default_epochs, lr = EXAMPLES[example]
    epochs = default_epochs if epochs is None else epochs
    if not (TRAIN_CORPUS / "index.json").is_file():
        raise SystemExit(f"training corpus not found: {TRAIN_CORPUS}/index.json is missing; make it with\n  {SYNTH_COMMAND}")
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    start = time.time()
    items = [it | {"y": targets(it["text"])} for it in prepare(load_corpus(TRAIN_CORPUS.parent, TRAIN_CORPUS.name), "ctc")]
    verify = prepare(load_corpus(VERIFY_CORPUS, "verification"), "ctc")
    sys.path.insert(0, str(HERE / example))
    model = getattr(importlib.import_module(module_name), factory)()
    batches = make_batches(items, BATCH_FRAMES)
    total = epochs * len(batches)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    print(f"{example}: {sum(p.numel() for p in model.parameters())} parameters, {len(items)} utterances, {epochs} epochs", flush=True)
    step = 0
    for epoch in range(epochs):
        model.train()
        losses = []
        for bi in torch.randperm(len(batches), generator=generator).tolist():
            batch = [items[i] for i in batches[bi]]
            log_probs = call(model, pad([it["x"] for it in batch])).transpose(0, 1)  # [T, B, C]
            loss = F.ctc_loss(
                log_probs, torch.cat([it["y"] for it in batch]), torch.tensor([it["frames"] for it in batch]),
                torch.tensor([len(it["y"]) for it in batch]), blank=0, zero_infinity=True,
            )  # fmt: skip
            for group in optimizer.param_groups:  # warm-up, then cosine decay to 5 %
                group["lr"] = lr * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / total)))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
        line = f"epoch {epoch + 1}/{epochs}: loss {sum(losses) / len(losses):.4f}"
        if (epoch + 1) % 4 == 0 or epoch == epochs - 1:
            line += f", verification CER {evaluate(model, call, verify)['cer']:.4f}"
        print(line, flush=True)
    result = evaluate(model, call, verify)
    metadata = {"example": example, "seed": str(seed), "epochs": str(epochs), "lr": str(lr), "verification": json.dumps(result)}
    path = HERE / example / "weights.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    print(f"{example}: verification CER {result['cer']:.4f}; wrote {path} in {(time.time() - start) / 60:.1f} min", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("example", choices=sorted(EXAMPLES))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.example, args.epochs, args.seed)


if __name__ == "__main__":
    main()
