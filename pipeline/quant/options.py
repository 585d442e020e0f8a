"""The manifest's `quantization:` section: the fidelity goal a searched recipe must reach, and the search's budget."""

from __future__ import annotations

from pydantic import Field

from pipeline.spec import Strict
from pipeline.verify.gates import Tolerance



class QuantizationOptions(Strict):
    search: bool = Field(
        True,
        description="Search a recipe for every quantized variant whose backend can keep parts of it at higher precision "
        "(off: the stock recipe, or the backend's hand lists, which pin a recipe and skip the search).",
    )
    goal: Tolerance | None = Field(
        None,
        description="Bounds every searched variant must meet over its own (its precision's defaults, the model's, the "
        "manifest's `tolerances`), e.g. `{max_cer_increase: 0.01}`: on held-out speech while searching, then on the "
        "verification split. None: the search aims at each variant's own bounds.",
    )
    margin: float = Field(
        0.5,
        gt=0,
        le=1,
        description="While searching, the error allowances (CER, decision disagreement, largest error) are scaled by this: the "
        "held-out speech is a few minutes at most, and the recipe must still hold on speech it never saw.",
    )
    max_evaluations: int = Field(16, ge=1, description="Most candidate recipes one search builds and streams.")
    max_ops: int = Field(6, ge=0, description="Ops from the per-tensor sensitivity ranking whose streamed effect is measured.")
    held_out_seconds: float | None = Field(
        None, gt=0, description="Held-out audio streamed per condition and candidate (None: all of it, ~23 s of the bundled split)."
    )
    confirm_seconds: float | None = Field(
        None,
        gt=0,
        description="Where a backend searches on a proxy runtime (QNN: onnxruntime's CPU EP for the HTP simulator), the "
        "held-out audio per condition the chosen recipe is confirmed on in the backend's own runtime (None: all of it).",
    )
    max_confirmations: int = Field(
        3, ge=1, description="Most chosen candidates confirmed on the backend's own runtime (one that fails there sends the search on)."
    )
