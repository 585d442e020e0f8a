"""Deterministically initialized checkpoints for the bring-your-own examples: python examples/byo/make_checkpoints.py

Each example ships the weights its manifest names; they are seeded, so this script rewrites them byte for byte.
The examples `train.py` trains (lstmcell_logmel) are not rewritten: their weights come from training.
"""

import importlib
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
EXAMPLES = {"pcm_vad": "gru_vad", "pcm_vad_lstmcell": "lstmcell_vad", "lstm_logmel": "lstm_recognizer", "causal_conv": "conv_recognizer", "attention_kv": "kv_recognizer"}

for directory, module in EXAMPLES.items():
    sys.path.insert(0, str(HERE / directory))
    torch.manual_seed(0)
    model = importlib.import_module(module).build()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(HERE / directory / "weights.safetensors"))
    sys.path.pop(0)
    print(directory, sum(p.numel() for p in model.parameters()), "parameters")
