"""How the recipe search sees LiteRT: int8 and int16x8 files can keep a state's recurrence, a front end or single ONNX
nodes float.

int8: TensorFlow's selective quantization (the quantization debugger's deny list) keeps ops float inside
a builtin-ops int8 file; it cannot keep ops at 16 bits inside int8, and it silently makes int8 of an
int16x8 file. int16x8 keeping anything float therefore goes through ai-edge-quantizer (mixed.py). Both
calibrate by min-max over every recorded sample. Kept ops become float ops with (de)quantize around
them, all builtin.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.backends.litert.tflite import TfliteConfig, TfliteStage
from pipeline.quant.quantizer import Quantizer, Space, onnx_covered, onnx_sensitivity_of
from pipeline.quant.recipe import Recipe


class LiteRtQuantizer(Quantizer):
    stage = TfliteStage
    bits = {"int8": 8, "int16x8": 16}
    kept_at = {"int8": "float32", "int16x8": "float32"}

    def space(self, precision: str) -> Space:
        quantized = precision in self.bits  # fp32 and fp16 files have nothing to keep at higher precision
        return Space(states=quantized, ops=quantized, frontends=quantized, methods=("minmax",))

    def pinned(self, config: TfliteConfig) -> bool:
        return bool(config.keep_float or config.keep_float_states or config.keep_float_frontends)

    def recipe_of(self, config: TfliteConfig) -> Recipe:
        return Recipe(
            keep_states=config.keep_float_states,
            keep_frontends=config.keep_float_frontends,
            keep_ops=config.keep_float,
            source="pin" if self.pinned(config) else "stock",
        )

    def apply(self, config: TfliteConfig, recipe: Recipe) -> TfliteConfig:
        return config.model_copy(
            update={
                "keep_float_states": tuple(dict.fromkeys(config.keep_float_states + recipe.keep_states)),
                "keep_float_frontends": tuple(dict.fromkeys(config.keep_float_frontends + recipe.keep_frontends)),
                "keep_float": tuple(dict.fromkeys(config.keep_float + recipe.keep_ops)),
            }
        )

    def sensitivity(self, config: TfliteConfig, inputs: dict, samples: list[dict]) -> list[dict]:
        return onnx_sensitivity_of(inputs, samples, self.bits[config.precision])  # the legalized ONNX graph onnx2tf converted

    def covered(self, config: TfliteConfig, inputs: dict, recipe: Recipe) -> tuple[str, ...]:
        return onnx_covered(inputs, recipe, include_log=True)

    def session(self, artifact_dir: Path):
        from pipeline.backends import get_backend

        return get_backend("litert").open_session(artifact_dir)


QUANTIZER = LiteRtQuantizer()
