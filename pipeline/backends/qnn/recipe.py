"""How the recipe search sees QNN: an a8w8 graph can keep a state's recurrence, a raw-PCM front end or single ONNX
nodes at 16 bits.

HTP runs mixed 8/16-bit graphs natively (get_qnn_qdq_config adds the conversions), so a kept unit
becomes a 16-bit island inside the 8-bit graph (qnn-qdq's `sixteen_bit_states` / `sixteen_bit`);
a16w8 has no higher activation precision to keep anything at, only its calibration to choose.
Calibration: min-max or a percentile of each tensor's histogram (state pairs keep their recorded
range either way: the state-range guard).

Candidates are streamed on onnxruntime's CPU EP running the QDQ graph (the HTP simulator costs
~0.1 s a call on the default model, ~2 min per candidate over the held-out speech); the CPU EP
drifts differently from HTP over a stream, so the chosen recipe is confirmed on the simulator,
compiled for the SoC verification streams on, before it is accepted (`confirm_session`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.backends.qnn.qdq import QdqConfig, QdqStage
from pipeline.quant.quantizer import Quantizer, Space, onnx_covered, onnx_sensitivity_of
from pipeline.quant.recipe import Recipe


class QnnQuantizer(Quantizer):
    stage = QdqStage
    bits = {"a8w8": 8, "a16w8": 16}
    kept_at = {"a8w8": "16-bit activations", "a16w8": "nothing (every activation is 16-bit)"}
    confirm_runtime = "QNN HTP simulator"

    def space(self, precision: str) -> Space:
        return Space(states=precision == "a8w8", ops=precision == "a8w8", frontends=precision == "a8w8", methods=("minmax", "percentile"))

    def pinned(self, config: QdqConfig) -> bool:
        return bool(config.sixteen_bit_states or config.sixteen_bit or config.sixteen_bit_frontends)

    def recipe_of(self, config: QdqConfig) -> Recipe:
        return Recipe(
            keep_states=config.sixteen_bit_states,
            keep_frontends=config.sixteen_bit_frontends,
            keep_ops=config.sixteen_bit,
            calibration=config.calibrate_method,
            source="pin" if self.pinned(config) else "stock",
        )

    def apply(self, config: QdqConfig, recipe: Recipe) -> QdqConfig:
        return config.model_copy(
            update={
                "sixteen_bit_states": tuple(dict.fromkeys(config.sixteen_bit_states + recipe.keep_states)),
                "sixteen_bit": tuple(dict.fromkeys(config.sixteen_bit + recipe.keep_ops)),
                "sixteen_bit_frontends": tuple(dict.fromkeys(config.sixteen_bit_frontends + recipe.keep_frontends)),
                "calibrate_method": recipe.calibration,
            }
        )

    def sensitivity(self, config: QdqConfig, inputs: dict, samples: list[dict]) -> list[dict]:
        return onnx_sensitivity_of(inputs, samples, self.bits[config.precision])  # the qnn-legalized graph qnn-qdq quantizes

    def covered(self, config: QdqConfig, inputs: dict, recipe: Recipe) -> tuple[str, ...]:
        return onnx_covered(inputs, recipe, include_log=False)

    def session(self, artifact_dir: Path):
        from pipeline.backends.qnn.session import QdqCpuSession

        return QdqCpuSession(artifact_dir)

    def confirm_session(self, artifact_dir: Path, options: dict[str, Any]):
        from pipeline.backends.qnn.options import DEFAULT_SOCS
        from pipeline.backends.qnn.session import QnnSession

        # the QDQ candidate compiled on the fly for the SoC verification streams on (the manifest's first)
        return QnnSession(artifact_dir, soc=options.get("soc") or DEFAULT_SOCS[0].model_dump())


QUANTIZER = QnnQuantizer()
