"""Train a zoo model on the synthesised corpus and write its checkpoint.

    python -m models.train MODEL [--minutes N] [--epochs N] [--seed 0]
    python -m models.train MODEL --evaluate-only     # load the checkpoint, print the metric

MODEL is one of lstm_ctc, dscnn_ctc, conformer_ctc (character CTC on log-mel frames) or kws
(speech/silence per 10 ms frame on raw PCM). Training reads the large training set in
`artifacts/corpus-train/` (made by `python -m models.corpus.synthesize --split train --minutes
60 --out artifacts/corpus-train`), runs seeded and deterministic on one CPU thread, and
evaluates on `models/corpus/verification`, whole utterances through `forward_batch`: greedy CTC
character error rate (total edit distance / total reference characters) for the CTC models,
frame accuracy for kws. The checkpoint goes to `models/checkpoints/<MODEL>.safetensors`.

`--evaluate-only` also prints the model's size figures: parameters, multiply-accumulates per
20 ms chunk (counted on the exported streaming ONNX graph, see `macs_per_chunk`) and state bytes.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
TRAIN_CORPUS = ROOT / "artifacts" / "corpus-train"
VERIFY_CORPUS = ROOT / "models" / "corpus"
CHECKPOINTS = ROOT / "models" / "checkpoints"
SYNTH_COMMAND = "python -m models.corpus.synthesize --split train --minutes 60 --out artifacts/corpus-train"
HOP = 160


@dataclass(frozen=True)
class Recipe:
    kind: str  # "ctc" or "vad"
    epochs: int
    lr: float
    batch_frames: int  # padded 10 ms frames per batch (utterances sorted by length)
    warmup: int = 100  # optimiser steps of linear warm-up, then cosine decay to 5 %
    clip: float = 5.0
    time_masks: int = 0  # SpecAugment-style time masks per utterance (CTC models)
    freq_masks: int = 0
    tempo: tuple[float, float] = (1.0, 1.0)  # per-batch time stretch of the log-mel (CTC models)


RECIPES = {
    "lstm_ctc": Recipe("ctc", epochs=18, lr=2e-3, batch_frames=4000, tempo=(0.8, 1.1)),
    "dscnn_ctc": Recipe("ctc", epochs=30, lr=2e-3, batch_frames=4000, tempo=(0.8, 1.1)),
    "conformer_ctc": Recipe("ctc", epochs=22, lr=1.5e-3, batch_frames=4000, warmup=200, tempo=(0.8, 1.1)),
    "kws": Recipe("vad", epochs=30, lr=3e-3, batch_frames=3000),
}


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------------
# Data


def load_corpus(corpus_dir: Path, split: str, minutes: float | None = None):
    from pipeline.audio.corpus import load_split

    utterances = load_split(corpus_dir, split)
    if minutes is not None:
        kept, total = [], 0.0
        for u in utterances:
            if total >= minutes * 60:
                break
            kept.append(u)
            total += u.seconds
        utterances = kept
    return utterances


def text_targets(text: str) -> list[int]:
    from models.common import VOCABULARY

    return [VOCABULARY.index(ch) + 1 for ch in " ".join(text.split())]


def frame_labels(speech, n_frames: int) -> np.ndarray:
    """1 where most of the samples frame i adds, [i*160, (i+1)*160), lie in a speech region,
    else 0: the rule `pipeline.audio.stream.frame_labels` scores decisions with."""
    mask = np.zeros(n_frames * HOP, np.float32)
    for start, end in speech:
        mask[start:end] = 1.0
    return (mask.reshape(n_frames, HOP).mean(axis=1) >= 0.5).astype(np.int64)


def prepare(utterances, kind: str) -> list[dict]:
    """Inputs and targets of each utterance, in memory: log-mel [T, 80] or PCM [N]."""
    from pipeline.audio.frontend import logmel_batch
    from pipeline.spec import LogMelFrontend

    frontend = LogMelFrontend()
    items = []
    for u in utterances:
        n_frames = len(u.audio) // HOP
        if n_frames == 0:
            continue
        if kind == "ctc":
            x = torch.from_numpy(logmel_batch(u.audio, frontend))
            y = torch.tensor(text_targets(u.text), dtype=torch.long)
        else:
            x = torch.from_numpy(np.ascontiguousarray(u.audio[: n_frames * HOP], dtype=np.float32))
            y = torch.from_numpy(frame_labels(u.speech, n_frames))
        items.append({"id": u.id, "text": u.text, "x": x, "y": y, "frames": n_frames})
    return items


def make_batches(items: list[dict], batch_frames: int) -> list[list[int]]:
    """Indices grouped by length so that batch size x longest utterance <= batch_frames."""
    order = sorted(range(len(items)), key=lambda i: items[i]["frames"])
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * items[i]["frames"] > batch_frames:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad(tensors: list[torch.Tensor]) -> torch.Tensor:
    longest = max(t.shape[0] for t in tensors)
    out = torch.zeros((len(tensors), longest) + tuple(tensors[0].shape[1:]), dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


# --------------------------------------------------------------------------------------------
# Model plumbing


def build_model(name: str) -> torch.nn.Module:
    if name not in RECIPES:
        raise SystemExit(f"unknown model {name!r}: expected one of {', '.join(RECIPES)}")
    return importlib.import_module(f"models.{name}").build()


def output_frames(model: torch.nn.Module, frames: int) -> int:
    """Output frames for `frames` 10 ms input frames (the conformer subsamples by 2)."""
    return frames // getattr(model, "subsample", 1)


def set_feature_stats(name: str, model: torch.nn.Module, items: list[dict]) -> None:
    """Per-bin mean and 1/std of the model's normalised input over all training frames."""
    with torch.no_grad():
        if name == "kws":
            feats = torch.cat([model.log_energies(it["x"][None])[0] for it in items])
        else:
            feats = torch.cat([it["x"] for it in items])
        mean = feats.double().mean(0)
        std = feats.double().std(0).clamp_min(1e-3)
        model.norm.mean.copy_(mean.float())
        model.norm.inv_std.copy_((1.0 / std).float())


def macs_per_chunk(model: torch.nn.Module, chunk_ms: int = 20) -> int:
    """Multiply-accumulates of one streaming call, counted on the exported ONNX graph.

    MatMul: output elements x shared dimension; Gemm: M x N x K; Conv: output elements x
    (input channels / groups) x kernel size. Element-wise ops (adds, activations, LayerNorm,
    softmax) are not counted.
    """
    import onnx

    spec = model.streaming_spec(chunk_ms)
    args = tuple(torch.zeros(i.shape) for i in spec.inputs) + tuple(torch.full(s.shape, s.init) for s in spec.states)
    buffer = io.BytesIO()
    torch.onnx.export(
        model, args, buffer, input_names=spec.input_names, output_names=spec.output_names, dynamo=False, opset_version=17
    )
    graph = onnx.shape_inference.infer_shapes(onnx.load_from_string(buffer.getvalue())).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for v in list(graph.value_info) + list(graph.input) + list(graph.output):
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    total = 0
    for node in graph.node:
        if node.op_type == "MatMul":
            total += math.prod(shapes[node.output[0]]) * shapes[node.input[0]][-1]
        elif node.op_type == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            a = shapes[node.input[0]]
            total += math.prod(shapes[node.output[0]]) * (a[0] if trans_a else a[1])
        elif node.op_type == "Conv":
            w = shapes[node.input[1]]  # [out channels, in channels / groups, *kernel]
            total += math.prod(shapes[node.output[0]]) * math.prod(w[1:])
    return total


def model_stats(model: torch.nn.Module) -> dict:
    spec = model.streaming_spec(20)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs_per_20ms_chunk": macs_per_chunk(model, 20),
        "state_bytes": sum(4 * math.prod(s.shape) for s in spec.states),
        "states": {s.input: list(s.shape) for s in spec.states},
    }


# --------------------------------------------------------------------------------------------
# Evaluation


def evaluate(name: str, model: torch.nn.Module, items: list[dict]) -> dict:
    """Whole utterances through forward_batch."""
    from pipeline.audio.ctc import ctc_greedy, edit_distance, normalize_text
    from models.common import VOCABULARY

    model.eval()
    with torch.no_grad():
        if RECIPES[name].kind == "ctc":
            edits = chars = 0
            for it in items:
                (logits,) = model.forward_batch(it["x"])
                ref, hyp = normalize_text(it["text"]), normalize_text(ctc_greedy(logits.numpy(), VOCABULARY))
                edits += edit_distance(ref, hyp)
                chars += len(ref)
            return {"cer": edits / chars, "utterances": len(items), "ref_chars": chars}
        correct = total = 0
        speech_correct = speech_total = 0
        for it in items:
            (logits,) = model.forward_batch(it["x"])
            pred = logits.argmax(-1)
            correct += int((pred == it["y"]).sum())
            total += len(pred)
            speech_correct += int(((pred == 1) & (it["y"] == 1)).sum())
            speech_total += int((it["y"] == 1).sum())
        return {
            "frame_accuracy": correct / total,
            "speech_recall": speech_correct / max(speech_total, 1),
            "utterances": len(items),
            "frames": total,
        }


def metric_text(result: dict) -> str:
    if "cer" in result:
        return f"verification CER {100 * result['cer']:.2f} % ({result['utterances']} utterances, {result['ref_chars']} chars)"
    return (
        f"verification frame accuracy {100 * result['frame_accuracy']:.2f} % "
        f"(speech recall {100 * result['speech_recall']:.2f} %, {result['utterances']} utterances, {result['frames']} frames)"
    )


# --------------------------------------------------------------------------------------------
# Training


def spec_augment(x: torch.Tensor, lengths: list[int], recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """Time and frequency masks on normalised-space inputs: masked bins get the training mean."""
    if not (recipe.time_masks or recipe.freq_masks):
        return x
    x = x.clone()
    for b, length in enumerate(lengths):
        for _ in range(recipe.time_masks):
            width = int(torch.randint(0, 11, (1,), generator=generator))
            start = int(torch.randint(0, max(1, length - width), (1,), generator=generator))
            x[b, start : start + width] = 0.0
        for _ in range(recipe.freq_masks):
            width = int(torch.randint(0, 11, (1,), generator=generator))
            start = int(torch.randint(0, 80 - width, (1,), generator=generator))
            x[b, :, start : start + width] = 0.0
    return x


def stretch(x: torch.Tensor, lengths: list[int], recipe: Recipe, generator: torch.Generator):
    """Tempo perturbation: resample the padded log-mel batch [B, T, 80] along time by a random
    factor (< 1 is faster speech), linear interpolation between frames."""
    low, high = recipe.tempo
    if low == high == 1.0:
        return x, lengths
    factor = low + (high - low) * float(torch.rand((), generator=generator))
    frames = max(2, round(x.shape[1] * factor))
    x = F.interpolate(x.transpose(1, 2), size=frames, mode="linear", align_corners=True).transpose(1, 2)
    return x.contiguous(), [max(1, min(frames, round(n * factor))) for n in lengths]


def train(name: str, minutes: float | None, epochs: int | None, seed: int) -> None:
    recipe = RECIPES[name]
    epochs = epochs if epochs is not None else recipe.epochs
    if not (TRAIN_CORPUS / "index.json").is_file():
        raise SystemExit(f"training corpus not found: {TRAIN_CORPUS}/index.json is missing; make it with\n  {SYNTH_COMMAND}")
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    start = time.time()

    train_utts = load_corpus(TRAIN_CORPUS.parent, TRAIN_CORPUS.name, minutes)
    train_minutes = sum(u.seconds for u in train_utts) / 60
    items = prepare(train_utts, recipe.kind)
    verify = prepare(load_corpus(VERIFY_CORPUS, "verification"), recipe.kind)
    log(f"{name}: {len(items)} training utterances ({train_minutes:.1f} min), {len(verify)} verification; "
        f"data ready in {time.time() - start:.0f} s")

    model = build_model(name)
    set_feature_stats(name, model, items)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {n_params} parameters; recipe {recipe}, epochs {epochs}, seed {seed}")

    mean = model.norm.mean  # SpecAugment masks raw log-mel to the training mean (0 after FeatureNorm)
    batches = make_batches(items, recipe.batch_frames)
    total_steps = epochs * len(batches)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return recipe.lr * (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, total_steps - recipe.warmup)
        return recipe.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    generator = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(epochs):
        model.train()
        epoch_start, losses = time.time(), []
        for bi in torch.randperm(len(batches), generator=generator).tolist():
            batch = [items[i] for i in batches[bi]]
            x = pad([it["x"] for it in batch])
            lengths = [it["frames"] for it in batch]
            if recipe.kind == "ctc":
                x, lengths = stretch(x, lengths, recipe, generator)
                if recipe.time_masks or recipe.freq_masks:
                    x = spec_augment(x - mean, lengths, recipe, generator) + mean
                logits = model.encode(x)
                log_probs = F.log_softmax(logits, dim=-1).transpose(0, 1)  # [T, B, C]
                out_lengths = torch.tensor([output_frames(model, n) for n in lengths])
                targets = torch.cat([it["y"] for it in batch])
                target_lengths = torch.tensor([len(it["y"]) for it in batch])
                loss = F.ctc_loss(log_probs, targets, out_lengths, target_lengths, blank=0, zero_infinity=True)
            else:
                logits = model.encode(x)  # [B, T, 2]
                y = pad([it["y"] for it in batch])
                valid = pad([torch.ones(n) for n in lengths]) > 0
                loss = F.cross_entropy(logits[valid], y[valid])
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
            optimizer.step()
            losses.append(loss.item())
            step += 1
        message = f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}, {time.time() - epoch_start:.0f} s"
        if epoch == epochs - 1 or (epoch + 1) % 4 == 0:
            message += "; " + metric_text(evaluate(name, model, verify))
        log(message)

    wall = time.time() - start
    result = evaluate(name, model, verify)
    log(f"{name}: final {metric_text(result)}; trained in {wall / 60:.1f} min wall")
    save(name, model, {
        "model": name,
        "seed": str(seed),
        "epochs": str(epochs),
        "train_minutes": f"{train_minutes:.2f}",
        "train_wall_seconds": f"{wall:.0f}",
        "verification": json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()}),
    })


def checkpoint_path(name: str) -> Path:
    return CHECKPOINTS / f"{name}.safetensors"


def save(name: str, model: torch.nn.Module, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(checkpoint_path(name)), metadata=metadata)
    log(f"wrote {checkpoint_path(name)} ({checkpoint_path(name).stat().st_size / 1e6:.2f} MB)")


def load(name: str) -> tuple[torch.nn.Module, dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = checkpoint_path(name)
    if not path.is_file():
        raise SystemExit(f"checkpoint {path} not found: train it with  python -m models.train {name}")
    model = build_model(name)
    model.load_state_dict(load_file(str(path)))
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    return model.eval(), metadata


def evaluate_only(name: str) -> None:
    torch.set_num_threads(1)
    model, metadata = load(name)
    verify = prepare(load_corpus(VERIFY_CORPUS, "verification"), RECIPES[name].kind)
    result = evaluate(name, model, verify)
    stats = model_stats(model)
    log(f"{name}: {metric_text(result)}")
    log(f"{name}: {stats['parameters']} parameters, {stats['macs_per_20ms_chunk']} MACs per 20 ms chunk, "
        f"{stats['state_bytes']} state bytes {stats['states']}, checkpoint {checkpoint_path(name).stat().st_size} bytes")
    log(f"{name}: checkpoint metadata {metadata}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(RECIPES))
    parser.add_argument("--minutes", type=float, default=None, help="use only the first N minutes of artifacts/corpus-train")
    parser.add_argument("--epochs", type=int, default=None, help="override the model's default epoch count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluate-only", action="store_true", help="load the checkpoint and print the verification metric")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.evaluate_only:
        evaluate_only(args.model)
    else:
        train(args.model, args.minutes, args.epochs, args.seed)


if __name__ == "__main__":
    main()
