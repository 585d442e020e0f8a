"""The manifest's `coreml:` section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CoreMlOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    deployment_target: Literal["iOS16", "iOS17", "iOS18"] = Field(
        "iOS17",
        description="Oldest iOS the explicit-state models must load on (the `stateful` variant always needs iOS18). "
        "iOS17 is the first with activation quantization (w8a8).",
    )
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"] = Field(
        "ALL", description="Compute units the contract asks the app to load the model with (MLModelConfiguration.computeUnits)."
    )
    weight_threshold: int = Field(
        2048,
        ge=0,
        description="int8w and w8a8: weights with fewer elements than this stay float (coremltools' own default); 0 quantizes every weight.",
    )
    keep_float_states: dict[Literal["w8a8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="w8a8 only: state inputs (e.g. c_in) whose recurrence keeps fp16 activations: every op on a path "
        "from the state input to its state output, and every op reading such a value (found in the converted program "
        "by structure, so it holds at any chunk length).",
    )
    keep_fp16_ops: dict[Literal["w8a8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="w8a8 only: MIL op names (as the search's search.json lists them) whose activations stay fp16. "
        "Any of the keep lists pins the variant's recipe: no search runs for it.",
    )
    keep_float_weights: dict[Literal["int8w", "w8a8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="int8w and w8a8: MIL op names of weight consts (or of the ops reading them) whose weights stay fp16.",
    )
    fp32_spectrum: bool = Field(
        True,
        description="Raw-PCM models: in the fp16-compute variants, the ops on a path from the PCM input to each log (the "
        "model's own spectrum) compute in fp32, which fp16 cannot hold (quiet bins lost under the log); listed per "
        "variant in ops.json. No effect on feature-input models.",
    )
    calibration_samples: int | None = Field(
        None, gt=0, description="w8a8: recorded (chunk, state) pairs the activation ranges are measured on (evenly spaced); None: all."
    )
