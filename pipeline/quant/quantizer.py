"""What a backend tells the recipe search: what can be kept at higher precision, and how a recipe is built and run.

A backend's `quantizer` names one `Quantizer`. Its quantize stage applies a recipe through `apply`
(the stage's own hand-list fields, which is also how a manifest pins a recipe), so the search
builds each candidate with exactly the stage that builds the shipped file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipeline.dag import Stage, StageConfig
from pipeline.quant.recipe import Recipe


@dataclass(frozen=True)
class Space:
    states: bool  # a state's recurrence can be kept at higher precision
    ops: bool  # single ops can
    methods: tuple[str, ...]  # calibration methods, the stock one first
    frontends: bool = False  # a chunk input's front end (its path to the spectrum's log) can

    @property
    def empty(self) -> bool:
        return not (self.states or self.ops or self.frontends or len(self.methods) > 1)


class Quantizer:
    stage: ClassVar[type[Stage]]
    # per searched precision: what the stock recipe quantizes to (bits of the sensitivity grid), what kept units become
    bits: ClassVar[dict[str, int]]
    kept_at: ClassVar[dict[str, str]]

    def space(self, precision: str) -> Space:
        raise NotImplementedError

    def higher(self, precision: str) -> str:
        return self.kept_at[precision]

    def pinned(self, config: StageConfig) -> bool:
        """The stage's config already carries a hand list (the manifest pins the recipe)."""
        raise NotImplementedError

    def apply(self, config: StageConfig, recipe: Recipe) -> StageConfig:
        """The stage's config with the recipe's units added to its own lists."""
        raise NotImplementedError

    def sensitivity(self, config: StageConfig, inputs: dict[str, Any], samples: list[dict]) -> list[dict]:
        """Per op, most damaged first: dicts with at least `node` (a name `apply` takes) and `sqnr_alone_db`."""
        raise NotImplementedError

    def covered(self, config: StageConfig, inputs: dict[str, Any], recipe: Recipe) -> tuple[str, ...]:
        """The ops the recipe already keeps at higher precision (its ops, and those of its kept recurrences)."""
        return recipe.keep_ops

    def session(self, artifact_dir: Path):
        """The runtime a candidate is streamed on."""
        raise NotImplementedError

    # what `session` runs, for the record (its calls time the recipe's latency cost); "": the backend's own runtime
    search_runtime: ClassVar[str] = ""
    # what `confirm_session` runs, for the record; "" when `session` already is the backend's own runtime
    confirm_runtime: ClassVar[str] = ""

    def confirm_session(self, artifact_dir: Path, options: dict[str, Any]):
        """Where `session` is a proxy (a faster runtime running the same file), the backend's own runtime: the chosen
        candidate is streamed on it too and accepted only if it holds there. `options` are the lowering's
        (`Lowering.search`'s `confirm`), e.g. the SoC verification streams on. Only called when `confirm_runtime` is set."""
        raise NotImplementedError

    def recipe_of(self, config: StageConfig) -> Recipe:
        """The recipe a config carries by itself: its hand lists (a pin), or nothing (stock)."""
        raise NotImplementedError


def with_recipe(quantizer: Quantizer, config: StageConfig, inputs: dict[str, Any], precision: str) -> tuple[Any, dict[str, Any]]:
    """A quantize stage's config with the searched recipe applied (its `recipe` input), and the record the contract
    and the report carry: the recipe, where it came from, and the search's summary."""
    from pipeline.quant.recipe import read_recipe, recipe_record

    search: dict[str, Any] = {}
    if "recipe" in inputs:
        recipe, search = read_recipe(inputs["recipe"].path)
        config = quantizer.apply(config, recipe)
    recipe = quantizer.recipe_of(config).model_copy(update={"source": "search"}) if search else quantizer.recipe_of(config)
    record = recipe_record(recipe, search, precision, quantizer.kept_at.get(precision, ""))
    # every op the recipe keeps, its kept recurrences' included (found by structure)
    record["covered"] = list(quantizer.covered(config, {k: v for k, v in inputs.items() if k != "recipe"}, recipe))
    return config, record


def onnx_sensitivity_of(inputs: dict[str, Any], samples: list[dict], bits: int) -> list[dict]:
    """Per node of the ONNX graph a quantize stage reads (`inputs["model"]`, whose node names its hand lists take)."""
    from pipeline.contract import read_contract
    from pipeline.quant.sensitivity import by_node, onnx_sensitivity

    source = inputs["model"].path
    return by_node(onnx_sensitivity(source / read_contract(source).artifact, samples, bits))


def onnx_covered(inputs: dict[str, Any], recipe: Recipe, *, include_log: bool) -> tuple[str, ...]:
    """The ONNX nodes a recipe keeps: its ops, its kept states' recurrences and its kept front ends (found by structure)."""
    from pipeline.contract import read_contract
    from pipeline.onnx_graph import frontend_nodes, recurrence_nodes

    source = inputs["model"].path
    contract = read_contract(source)
    graph = source / contract.artifact
    states = recurrence_nodes(graph, contract.stream, recipe.keep_states, "search", "quant-search") if recipe.keep_states else ()
    fronts = frontend_nodes(graph, recipe.keep_frontends, "search", "quant-search", include_log=include_log) if recipe.keep_frontends else ()
    return tuple(dict.fromkeys((*recipe.keep_ops, *states, *fronts)))
