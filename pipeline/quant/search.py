"""quant-search: find the recipe that keeps a quantized variant within the target's fidelity goal.

Each candidate recipe is built by the backend's own quantize stage into a scratch directory and
streamed through the backend's evaluation runtime, on its own state, over held-out calibration
speech (utterances the calibration ranges never saw, clean and a noisy, reverberant copy), against
PyTorch on the same audio. The goal is the variant's bounds with the manifest's `quantization.goal`
over them (by default CER within 1 point of PyTorch's transcript, decisions agreeing on 99.5 %).

    1. the stock recipe: every tensor at the requested precision, min-max ranges;
    2. if it misses the goal, sensitivity: each unit (a state's recurrence; each of the ops whose
       values their own grid damages most, from `sensitivity`) kept at higher precision alone,
       streamed: its effect on the streamed metric;
    3. greedy: add units in the order of that effect, keeping each one that improves the metric,
       until the goal holds, then stop; then the other calibration methods the backend takes.

Deterministic (ordered candidates, seeded data, single-threaded runtimes), so the same inputs give
the same recipe, cached like any artifact. `recipe.json` holds the choice, `search.json` every
evaluation, the sensitivity table and the goal; wall-clock figures go to `timings.json`.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from pipeline.audio.stream import StreamData
from pipeline.cache import Artifact, artifact_bytes
from pipeline.contract import read_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import UserError
from pipeline.quant.recipe import RECIPE_FILE, SEARCH_FILE, Recipe, Unit
from pipeline.verify.gates import Tolerance, judge

TIMINGS_FILE = "timings.json"
GOAL_FIGURES = {"max_cer_vs_reference", "max_cer_increase", "min_decision_agreement", "min_sqnr_db", "max_rel"}


class SearchConfig(StageConfig):
    backend: str = Field(description="Registered backend whose quantize stage builds each candidate.")
    precision: str = Field(description="Requested precision, in the backend's vocabulary.")
    variant: str = Field("", exclude=True, description="Variant name, for messages (not part of the key).")
    stage_config: dict[str, Any] = Field(description="The quantize stage's config before any recipe is applied.")
    default_tolerance: Tolerance = Field(description="The backend's default bounds for this precision.")
    goal: Tolerance | None = Field(None, description="The manifest's `quantization.goal`: bounds over the variant's own, for searched variants.")
    tolerance_override: Tolerance | None = Field(None, description="The manifest's bounds for the variant, applied last.")
    data: tuple[StreamData, ...] = Field(min_length=1, description="Held-out speech, each condition streamed on its own.")
    margin: float = Field(0.5, gt=0, le=1, description="Scale of the goal's error allowances while searching.")
    max_evaluations: int = Field(16, ge=1, description="Most candidate recipes built and streamed.")
    max_ops: int = Field(6, ge=0, description="Ops from the sensitivity ranking whose streamed effect is measured.")
    sensitivity_samples: int = Field(256, gt=0, description="Recorded pairs the per-tensor figures are measured on.")


@dataclass
class Evaluation:
    recipe: Recipe
    passed: bool
    failures: list[str]
    score: float
    conditions: dict[str, dict]
    size_bytes: int
    seconds: float
    label: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "recipe": self.recipe.model_dump(),
            "passed": self.passed,
            "score": self.score,
            "size_bytes": self.size_bytes,
            "conditions": self.conditions,
            "failures": self.failures,
        }


def shortfall(metrics: dict[str, dict], extra: dict, tolerance: Tolerance) -> float:
    """How far one stream is from the goal, as one number to rank candidates by (0 = everything at its bound or better
    is not the pass/fail test: `judge` is). Transcript error over its bound, decision disagreement over the allowed,
    and SQNR short of its bound, summed."""
    score = 0.0
    if "cer_vs_reference" in extra and tolerance.max_cer_vs_reference is not None:
        score += float(extra["cer_vs_reference"]) / max(tolerance.max_cer_vs_reference, 1e-3)
    if "decision_agreement" in extra and tolerance.min_decision_agreement is not None:
        score += (1.0 - float(extra["decision_agreement"])) / max(1.0 - tolerance.min_decision_agreement, 1e-3)
    for m in metrics.values():
        if tolerance.min_sqnr_db is not None and math.isfinite(m["sqnr_db"]):
            score += max(0.0, tolerance.min_sqnr_db - m["sqnr_db"]) / 10.0
        elif not math.isfinite(m["sqnr_db"]) and m["sqnr_db"] < 0:
            score += 100.0
    return score


@dataclass
class _Held:
    name: str
    stream: Any
    reference: dict[str, np.ndarray]
    transcript: str | None


@dataclass
class _Search:
    config: SearchConfig
    inputs: dict[str, Artifact]
    ctx: StageContext
    quantizer: Any
    tolerance: Tolerance
    held: list[_Held]
    scratch: Path
    stage_config: Any
    evaluations: list[Evaluation] = field(default_factory=list)
    seen: dict[str, Evaluation] = field(default_factory=dict)

    @property
    def closed_loop(self) -> Tolerance:
        """What a candidate is held to: the goal with its error allowances scaled by the margin, no teacher-forced bounds."""
        t, m = self.tolerance, self.config.margin
        update: dict[str, Any] = {"one_step_max_abs": None, "one_step_max_rel": None}
        for name in ("max_cer_vs_reference", "max_cer_increase", "max_abs", "max_rel"):
            if getattr(t, name) is not None:
                update[name] = getattr(t, name) * m
        if t.min_decision_agreement is not None:
            update["min_decision_agreement"] = 1.0 - (1.0 - t.min_decision_agreement) * m
        return t.model_copy(update=update)

    @property
    def exhausted(self) -> bool:
        """Only candidates that were built and streamed count against the budget."""
        return sum(1 for e in self.evaluations if math.isfinite(e.score)) >= self.config.max_evaluations

    def evaluate(self, recipe: Recipe, label: str) -> Evaluation:
        from pipeline.verify.stage import closed_loop_figures

        key = recipe.model_dump_json()
        if key in self.seen:
            return self.seen[key]
        started = time.perf_counter()
        out = Path(tempfile.mkdtemp(prefix="candidate-", dir=self.scratch))
        stage_config = self.quantizer.apply(self.stage_config, recipe)
        sub = StageContext(node_id=f"{self.ctx.node_id} [{label}]", log=lambda message: None)
        try:
            self.quantizer.stage.run(stage_config, {k: v for k, v in self.inputs.items() if k not in ("torch", "recipe")}, out, sub)
        except UserError as exc:  # this recipe cannot be built (a state the guard fails, a unit with nothing to keep)
            shutil.rmtree(out, ignore_errors=True)
            failed = Evaluation(recipe, False, [f"cannot be built: {exc.message}"], math.inf, {}, 0, time.perf_counter() - started, label)
            self.evaluations.append(failed)
            self.seen[key] = failed
            self.ctx.log(f"{self.config.variant}: [{len(self.evaluations)}] {label}: cannot be built: {exc.message}")
            return failed
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        session = self.quantizer.session(out)
        conditions, failures, score = {}, [], 0.0
        for held in self.held:
            outputs, _ = session.stream(held.stream.chunks)
            steps = len(held.stream.chunks)
            metrics, extra, _record = closed_loop_figures(session.spec, held.stream, held.reference, outputs, held.transcript, steps)
            for m in metrics.values():  # no teacher-forced calls in the search (their bounds are off): the closed loop is judged
                m["one_step_max_abs"], m["one_step_reference_max_abs"] = 0.0, 1.0
            found = judge(metrics, {}, self.closed_loop, extra)
            failures += [f"{held.name}: {f}" for f in found]
            score += shortfall(metrics, extra, self.closed_loop)
            conditions[held.name] = {
                **{k: v for k, v in extra.items() if isinstance(v, (int, float))},
                "sqnr_db": {name: m["sqnr_db"] for name, m in metrics.items()},
                "passed": not found,
            }
        contract = read_contract(out)
        evaluation = Evaluation(
            recipe=recipe,
            passed=not failures,
            failures=failures,
            score=score,
            conditions=conditions,
            size_bytes=artifact_bytes(out / contract.artifact),
            seconds=time.perf_counter() - started,
            label=label,
        )
        shutil.rmtree(out, ignore_errors=True)
        self.evaluations.append(evaluation)
        self.seen[key] = evaluation
        self.ctx.log(
            f"{self.config.variant}: [{len(self.evaluations)}] {label}: "
            + ", ".join(f"{name} {_headline(c)}" for name, c in conditions.items())
            + (" - meets the goal" if evaluation.passed else "")
        )
        return evaluation


def _headline(condition: dict) -> str:
    if "cer_vs_reference" in condition:
        return f"CER vs PyTorch {condition['cer_vs_reference']:.4f}"
    if "decision_agreement" in condition:
        return f"decisions {condition['decision_agreement']:.4f}"
    worst = min(condition["sqnr_db"].values(), default=math.inf)
    return f"SQNR {worst:.1f} dB"


def _better(a: Evaluation, b: Evaluation) -> bool:
    """a beats b: passing first, then the smaller shortfall, then the smaller file."""
    return (not a.passed, round(a.score, 9), a.size_bytes) < (not b.passed, round(b.score, 9), b.size_bytes)


def search(s: _Search, states: list[Unit], ranked_ops: list[str], methods: tuple[str, ...]) -> tuple[Evaluation, dict[str, dict]]:
    """The greedy search; returns the chosen evaluation and the streamed effect of each unit tried first."""
    stock = Recipe(calibration=methods[0], source="stock")
    current = s.evaluate(stock, "stock")
    effects: dict[str, dict] = {}

    def attempt(unit: Unit, label: str) -> Evaluation | None:
        result = s.evaluate(current.recipe.with_unit(unit), label)
        if not math.isfinite(result.score):  # e.g. a state whose path to its output no element-wise op carries (h through a matmul)
            effects.setdefault(unit.label, {"not_applicable": result.failures[0]})
            return None
        effects.setdefault(unit.label, {"score": result.score, "gain": current.score - result.score, "passed": result.passed, "size_bytes": result.size_bytes})
        return result

    # structural units first (state recurrences, then front ends), each kept if it helps: its ops alone mean nothing.
    # Passes repeat while one adopts a unit: a state that did not help next to a broken front end may help after it.
    remaining, adopted = list(states), True
    while adopted and remaining and not current.passed and not s.exhausted:
        adopted = False
        for unit in list(remaining):
            if current.passed or s.exhausted:
                break
            result = attempt(unit, f"+ {unit.label}")
            if result is None:
                remaining.remove(unit)
            elif _better(result, current):
                current, adopted = result, True
                remaining.remove(unit)
    # then rounds over single ops, most damaged by their own grid first: the best one of a round is kept if it helps
    while not current.passed and not s.exhausted:
        covered = set(s.quantizer.covered(s.stage_config, s.inputs, current.recipe))
        best: Evaluation | None = None
        for name in [n for n in ranked_ops if n not in covered][: s.config.max_ops]:
            if s.exhausted:
                break
            result = attempt(Unit(kind="op", name=name), f"+ op {name}")
            if result is not None and (best is None or _better(result, best)):
                best = result
            if result is not None and result.passed:
                break
        if best is None or not _better(best, current):
            break
        current = best
    for method in methods[1:]:
        if current.passed or s.exhausted:
            break
        candidate = s.evaluate(current.recipe.model_copy(update={"calibration": method}), f"calibration {method}")
        if _better(candidate, current):
            current = candidate
    return current, effects


class SearchStage(Stage):
    name = "quant-search"
    version = "4"
    tools = ("numpy", "torch")
    Config = SearchConfig

    @classmethod
    def key_tools(cls, config: SearchConfig) -> tuple[str, ...]:
        from pipeline.backends import get_backend

        return cls.tools + get_backend(config.backend).tools

    @classmethod
    def run(cls, config: SearchConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        from pipeline.audio.stream import speech_stream
        from pipeline.backends import get_backend
        from pipeline.export.session import TorchSession
        from pipeline.verify.records import load_calibration
        from pipeline.verify.stage import model_tolerance

        quantizer = get_backend(config.backend).load_quantizer()
        torch_dir = inputs["torch"].path
        tolerance = (
            config.default_tolerance.merged(model_tolerance(torch_dir, config.precision)).merged(config.goal).merged(config.tolerance_override)
        )
        reference = TorchSession(torch_dir)
        spec = reference.spec
        held = []
        for data in config.data:
            stream = speech_stream(data, spec)
            outputs, _ = reference.stream(stream.chunks, ctx.progress, f"{ctx.node_id}: torch ({data.condition})")
            transcript = None
            ctc = [o for o in spec.outputs if o.kind == "ctc_logits"]
            if ctc and spec.decoder is not None and spec.decoder.kind == "ctc_greedy":
                from pipeline.audio.ctc import ctc_greedy
                from pipeline.verify.metrics import per_frame

                transcript = ctc_greedy(per_frame(outputs[ctc[0].name], ctc[0].time_axis), spec.decoder.vocabulary, spec.decoder.blank)
            held.append(_Held(data.condition, stream, outputs, transcript))

        stage_config = quantizer.stage.Config.model_validate(config.stage_config)
        space = quantizer.space(config.precision)
        samples: list[dict] = []
        if "calibration" in inputs:  # an uncalibrated precision (Core ML int8w) ranks its weights without them
            recorded = load_calibration(inputs["calibration"].path)
            count = len(next(iter(recorded.values())))
            picks = np.linspace(0, count - 1, min(count, config.sensitivity_samples)).round().astype(int)
            samples = [{name: values[k] for name, values in recorded.items()} for k in picks]
        started = time.perf_counter()
        sensitivity = quantizer.sensitivity(stage_config, inputs, samples) if space.ops else []
        sensitivity_seconds = time.perf_counter() - started
        states = [Unit(kind="state", name=s.input) for s in spec.states] if space.states else []
        states += [Unit(kind="frontend", name=i.name) for i in spec.inputs] if space.frontends else []
        ranked_ops = [f["node"] for f in sensitivity]

        scratch = Path(tempfile.mkdtemp(prefix="speechport-search-"))
        try:
            state = _Search(config, inputs, ctx, quantizer, tolerance, held, scratch, stage_config)
            chosen, effects = search(state, states, ranked_ops, space.methods)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        stock = state.evaluations[0]
        recipe = chosen.recipe.model_copy(update={"source": "search"})
        (out / RECIPE_FILE).write_text(recipe.model_dump_json(indent=1) + "\n")
        summary = {
            "variant": config.variant,
            "goal": tolerance.model_dump(exclude_none=True, include=GOAL_FIGURES),
            "searched_to": state.closed_loop.model_dump(exclude_none=True, include=GOAL_FIGURES),
            "met": chosen.passed,
            "kept_at": quantizer.higher(config.precision),
            "held_out": {h.name: {"seconds": h.stream.seconds, "steps": len(h.stream.chunks)} for h in held},
            "evaluations_run": len(state.evaluations),
            "before": stock.conditions,
            "after": chosen.conditions,
            "cost": {"size_bytes": chosen.size_bytes - stock.size_bytes, "stock_size_bytes": stock.size_bytes},
            "effects": effects,
            "sensitivity": sensitivity,
            "evaluations": [e.record() for e in state.evaluations],
        }
        (out / SEARCH_FILE).write_text(json.dumps(summary, indent=1) + "\n")
        timings = {"sensitivity_seconds": sensitivity_seconds, "evaluation_seconds": [e.seconds for e in state.evaluations]}
        (out / TIMINGS_FILE).write_text(json.dumps(timings, indent=1) + "\n")
        ctx.log(f"{config.variant}: {recipe.describe()} after {len(state.evaluations)} evaluations" + ("" if chosen.passed else " (goal NOT met on held-out speech)"))
