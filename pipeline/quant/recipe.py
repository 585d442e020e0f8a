"""A quantization recipe: which parts of a quantized variant stay at higher precision, and how ranges are measured.

The recipe is the quantize stage's input (from the search, or pinned by the manifest's hand lists),
part of its key through the search artifact's digest, and written into the contract
(`quantization`) and the report. Names are the backend's own: ONNX node names for LiteRT and QNN
(the graph they both lower from), MIL op names for Core ML; state inputs by their contract names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipeline.spec import Strict

RECIPE_FILE = "recipe.json"
SEARCH_FILE = "search.json"


class Recipe(Strict):
    keep_states: tuple[str, ...] = Field(
        (), description="State inputs whose recurrence (paths to the paired output, and their readers) stays at the higher precision."
    )
    keep_frontends: tuple[str, ...] = Field(
        (), description="Chunk inputs (raw PCM) whose front end (every op on a path to the spectrum's log) stays at the higher precision."
    )
    keep_ops: tuple[str, ...] = Field((), description="Ops (backend names) kept at the higher precision.")
    calibration: str = Field("minmax", description="How activation ranges are measured on the recorded trajectories.")
    source: Literal["stock", "search", "pin"] = Field("stock", description="Where the recipe came from.")

    @property
    def islands(self) -> tuple[str, ...]:
        return tuple(f"state {s}" for s in self.keep_states) + tuple(f"frontend {f}" for f in self.keep_frontends) + tuple(f"op {o}" for o in self.keep_ops)

    def describe(self) -> str:
        kept = ", ".join(self.islands) or "nothing"
        return f"{self.source}: {self.calibration} ranges, kept at higher precision: {kept}"

    def with_unit(self, unit: "Unit") -> "Recipe":
        if unit.kind == "state":
            return self.model_copy(update={"keep_states": (*self.keep_states, unit.name)})
        if unit.kind == "frontend":
            return self.model_copy(update={"keep_frontends": (*self.keep_frontends, unit.name)})
        if unit.kind == "op":
            return self.model_copy(update={"keep_ops": (*self.keep_ops, unit.name)})
        return self.model_copy(update={"calibration": unit.name})


class Unit(Strict):
    """One step the search can take: keep a state's recurrence, an input's front end or one op at higher precision, or
    change the calibration."""

    kind: Literal["state", "frontend", "op", "calibration"]
    name: str

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


def read_recipe(artifact_dir: Path) -> tuple[Recipe, dict[str, Any]]:
    """The recipe a search (or pin) artifact holds, and the search summary next to it ({} when pinned)."""
    recipe = Recipe.model_validate_json((artifact_dir / RECIPE_FILE).read_text())
    search = artifact_dir / SEARCH_FILE
    return recipe, (json.loads(search.read_text()) if search.is_file() else {})


def recipe_record(recipe: Recipe, search: dict[str, Any], precision: str, higher: str) -> dict[str, Any]:
    """What the contract and the report carry about a quantized variant's recipe."""
    record: dict[str, Any] = {"precision": precision, "kept_at": higher, **recipe.model_dump()}
    if search:
        record["search"] = {
            k: search[k]
            for k in ("goal", "searched_to", "met", "evaluations_run", "held_out", "before", "after", "confirmed", "confirmation", "cost", "effects")
            if k in search
        }
        # the tensors their own grid damages most, for the report's plot (the whole table stays in the search artifact)
        record["sensitivity"] = [{k: f[k] for k in ("node", "op", "min", "max", "rms", "sqnr_alone_db")} for f in search.get("sensitivity", [])[:20]]
    return record
