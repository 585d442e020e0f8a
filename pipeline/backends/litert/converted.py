"""What the onnx2tf conversion artifact holds: onnx2tf's output folder (SavedModel, fp32 and fp16
flatbuffers) and `layers.json`, Keras layer -> the ONNX node it came from."""

from __future__ import annotations

import json
from pathlib import Path

SAVED_MODEL_DIR = "saved_model"
LAYERS_FILE = "layers.json"


def converted_float(artifact: Path, precision: str) -> Path:
    """onnx2tf's flatbuffer for fp32 or fp16 inside a convert artifact."""
    return artifact / SAVED_MODEL_DIR / f"model_float{precision[2:]}.tflite"


def load_layers(artifact: Path) -> dict[str, str]:
    return json.loads((artifact / LAYERS_FILE).read_text())
