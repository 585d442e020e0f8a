"""onnx2tf: the legalized ONNX graph -> a TensorFlow SavedModel plus fp32 and fp16 flatbuffers, once per chunk length.

Every LiteRT precision derives from this one conversion: fp32 and fp16 are onnx2tf's own files,
the quantized ones come from TensorFlow's converter on the SavedModel (0.3 s a file, against
~5-12 s for another onnx2tf run). onnx2tf runs in a subprocess in a private directory, offline,
on a private copy of the graph (it rewrites its input in place). Its debug log maps each Keras
layer back to the ONNX node it came from (`layers.json`), which is how an op in a flatbuffer is
traced to a node the user can find in their model.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

from pydantic import Field

from pipeline.backends.litert.converted import LAYERS_FILE, SAVED_MODEL_DIR
from pipeline.backends.litert.flatbuffer import ANSI_ESCAPE, onnx_nodes_by_layer
from pipeline.backends.litert.toolrun import failure_summary, run_tool
from pipeline.cache import Artifact
from pipeline.contract import read_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import ToolchainError



class ConvertConfig(StageConfig):
    timeout_seconds: int = Field(1800, gt=0, description="Longest the onnx2tf run may take.")


def multidimensional_inputs(onnx_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers and len(i.type.tensor_type.shape.dim) >= 3]


def run_onnx2tf(onnx_path: Path, workdir: Path, timeout: int, where: str) -> tuple[Path, str]:
    """onnx2tf on a private copy of the graph; returns its output folder and its debug log."""
    variant = f"litert@{where}"
    private = workdir / "model.onnx"
    shutil.copyfile(onnx_path, private)  # onnx2tf rewrites its input in place (it names unnamed nodes)
    # -osd: a SavedModel signature for the quantizer; -nuo: the graph is simplified already (and onnxsim is absent)
    command = [sys.executable, "-m", "onnx2tf", "-i", private.name, "-o", SAVED_MODEL_DIR, "-osd", "-nuo", "-v", "debug"]
    # onnx2tf takes every 3-D+ graph input for channels-first and transposes it; a [1, frames, dim] KV cache concatenated
    # with a freshly computed [1, 2, dim] then fails to convert. Kept in ONNX layout (-kat), the inputs arrive as the model
    # wrote them; whatever layout the outputs come out in, the binding records it and the session feeds it back through it.
    kept = multidimensional_inputs(onnx_path)
    if kept:
        command += ["-kat", *kept]
    done = run_tool(command, workdir, timeout, "onnx2tf", variant, where)
    output = workdir / SAVED_MODEL_DIR
    log = ANSI_ESCAPE.sub("", done.stdout + "\n" + done.stderr)
    unsupported = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", log)))
    if unsupported:
        layers = onnx_nodes_by_layer(log)
        located = re.findall(r'callsite\("model/([^/"]+)/[^"]*"', log)
        nodes = sorted({layers[layer] for layer in located if layer in layers})
        raise ToolchainError(
            f"TensorFlow Lite has neither a builtin nor a Select-TF kernel for TF op(s) {', '.join(unsupported)}"
            + (f" (from ONNX node {', '.join(nodes)})" if nodes else "")
            + "; change the model to avoid the op, or add a legalize rewrite (pipeline/backends/litert/legalize.py)",
            tool="onnx2tf",
            stage=where,
            variant=variant,
            op=", ".join(unsupported),
        )
    if done.returncode != 0 or not (output / "model_float32.tflite").is_file():
        raise ToolchainError(
            f"could not convert the legalized graph ({failure_summary(done)}); the error names the ONNX node, "
            "and a legalize rewrite (pipeline/backends/litert/legalize.py) may avoid the pattern",
            tool="onnx2tf",
            stage=where,
            variant=variant,
        )
    return output, log


class ConvertStage(Stage):
    name = "onnx2tf"
    version = "2"
    tools = ("onnx2tf", "tensorflow", "tf_keras", "onnx")
    Config = ConvertConfig

    @classmethod
    def run(cls, config: ConvertConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        source = inputs["model"].path
        workdir = Path(tempfile.mkdtemp(prefix="speechport-onnx2tf-"))
        try:
            converted, log = run_onnx2tf(source / read_contract(source).artifact, workdir, config.timeout_seconds, ctx.node_id)
            shutil.copytree(converted, out / SAVED_MODEL_DIR)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        (out / LAYERS_FILE).write_text(json.dumps(onnx_nodes_by_layer(log), indent=1, sort_keys=True) + "\n")
