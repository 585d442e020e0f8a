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
       until the goal holds, then stop; then the other calibration methods the backend takes;
    4. where the backend searches on a proxy runtime (`Quantizer.confirm_runtime`: QNN streams
       candidates on onnxruntime's CPU EP, its own runtime being the much slower HTP simulator), the
       chosen candidate is streamed on the backend's own runtime too, over the held-out conditions
       cut to `confirm_seconds`, against the same bounds. A proxy drifts differently over a stream,
       so a candidate that misses there counts as failing and the search goes on from where it was
       (its streamed evaluations are replayed, not rebuilt), up to `max_confirmations`.

Deterministic (ordered candidates, seeded data, single-threaded runtimes), so the same inputs give
the same recipe, cached like any artifact. `recipe.json` holds the choice, `search.json` every
evaluation, the sensitivity table and the goal; wall-clock figures go to `timings.json`, among them
what the recipe costs in latency: the median call of the stock candidate and of the chosen one, both
streamed over the same held-out speech on the same runtime in the same run.
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
from pipeline.errors import InternalError, ToolchainError, UserError
from pipeline.quant.recipe import RECIPE_FILE, SEARCH_FILE, Recipe, Unit
from pipeline.verify.gates import Tolerance, judge

TIMINGS_FILE = "timings.json"
GOAL_FIGURES = {"max_cer_vs_reference", "max_cer_increase", "min_decision_agreement", "min_sqnr_db", "max_rel", "max_glitch_rel"}


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
    confirm_seconds: float | None = Field(None, gt=0, description="Held-out audio per condition the chosen candidate is confirmed on (None: all).")
    max_confirmations: int = Field(3, ge=1, description="Most chosen candidates confirmed on the backend's own runtime.")
    confirm: dict[str, Any] = Field(default_factory=dict, description="The lowering's options for the confirming runtime (e.g. the SoC).")


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
    artifact_dir: Path | None = None  # kept until the search ends where a candidate may be confirmed
    confirmed: dict[str, Any] | None = None  # its figures on the backend's own runtime
    confirm_seconds: float | None = None  # wall clock: timings.json, not search.json (the artifact stays deterministic)
    call_ms_p50: float | None = None  # median call on the search runtime over the held-out streams (wall clock, likewise)

    def record(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "recipe": self.recipe.model_dump(),
            "passed": self.passed,
            "score": self.score,
            "size_bytes": self.size_bytes,
            "conditions": self.conditions,
            "failures": self.failures,
            **({"confirmed": self.confirmed} if self.confirmed is not None else {}),
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
    confirm_held: list[_Held] = field(default_factory=list)  # the held-out conditions, cut to `confirm_seconds`
    evaluations: list[Evaluation] = field(default_factory=list)
    seen: dict[str, Evaluation] = field(default_factory=dict)
    confirmations: int = 0

    @property
    def confirming(self) -> bool:
        return bool(self.quantizer.confirm_runtime)

    @property
    def closed_loop(self) -> Tolerance:
        """What a candidate is held to: the goal with its error allowances scaled by the margin, no teacher-forced bounds."""
        t, m = self.tolerance, self.config.margin
        update: dict[str, Any] = {"one_step_max_abs": None, "one_step_max_rel": None}
        for name in ("max_cer_vs_reference", "max_cer_increase", "max_abs", "max_rel", "max_glitch_rel"):
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
        key = recipe.model_dump_json()
        if key in self.seen:
            return self.seen[key]
        started = time.perf_counter()
        out = Path(tempfile.mkdtemp(prefix="candidate-", dir=self.scratch))
        stage_config = self.quantizer.apply(self.stage_config, recipe)
        sub = StageContext(node_id=f"{self.ctx.node_id} [{label}]", log=lambda message: None)
        try:
            self.quantizer.stage.run(stage_config, {k: v for k, v in self.inputs.items() if k not in ("torch", "recipe")}, out, sub)
        except (UserError, ToolchainError) as exc:
            # this recipe cannot be built: a state the guard fails, a unit with nothing to keep, or a file the toolchain
            # made for it and cannot run (ai-edge-quantizer's int16x8 of one kept matmul: "Constant buffer 2 specified an
            # out of range offset"); the search goes on, and a stock recipe that cannot be built fails its own stage
            shutil.rmtree(out, ignore_errors=True)
            failed = Evaluation(recipe, False, [f"cannot be built: {exc.message}"], math.inf, {}, 0, time.perf_counter() - started, label)
            self.evaluations.append(failed)
            self.seen[key] = failed
            self.ctx.log(f"{self.config.variant}: [{len(self.evaluations)}] {label}: cannot be built: {exc.message}")
            return failed
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        conditions, failures, score, call_seconds = self.stream(self.quantizer.session(out), self.held)
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
            artifact_dir=out if self.confirming else None,
            call_ms_p50=float(np.median(call_seconds) * 1000),
        )
        if not self.confirming:
            shutil.rmtree(out, ignore_errors=True)
        self.evaluations.append(evaluation)
        self.seen[key] = evaluation
        self.ctx.log(
            f"{self.config.variant}: [{len(self.evaluations)}] {label}: "
            + ", ".join(f"{name} {_headline(c)}" for name, c in conditions.items())
            + (" - meets the goal" + (f" (to be confirmed on {self.quantizer.confirm_runtime})" if self.confirming else "") if evaluation.passed else "")
        )
        return evaluation

    def stream(self, session: Any, held: list[_Held]) -> tuple[dict[str, dict], list[str], float, np.ndarray]:
        """Each held-out condition streamed on `session`, on its own state, judged by the closed-loop bounds. Also
        returns the wall clock of every call."""
        from pipeline.verify.figures import closed_loop_figures

        conditions, failures, score, call_seconds = {}, [], 0.0, []
        for h in held:
            outputs, seconds = session.stream(h.stream.chunks)
            call_seconds.append(np.asarray(seconds, dtype=np.float64))
            steps = len(h.stream.chunks)
            metrics, extra, _record = closed_loop_figures(session.spec, h.stream, h.reference, outputs, h.transcript, steps)
            for m in metrics.values():  # no teacher-forced calls in the search (their bounds are off): the closed loop is judged
                m["one_step_max_abs"], m["one_step_reference_max_abs"] = 0.0, 1.0
            found = judge(metrics, {}, self.closed_loop, extra)
            failures += [f"{h.name}: {f}" for f in found]
            score += shortfall(metrics, extra, self.closed_loop)
            conditions[h.name] = {
                **{k: v for k, v in extra.items() if isinstance(v, (int, float))},
                "sqnr_db": {name: m["sqnr_db"] for name, m in metrics.items()},
                "passed": not found,
            }
        return conditions, failures, score, np.concatenate(call_seconds)

    def confirm(self, evaluation: Evaluation) -> None:
        """Stream the candidate on the backend's own runtime; one that misses the bounds there no longer passes."""
        if evaluation.artifact_dir is None:
            raise InternalError(f"{self.config.variant}: candidate {evaluation.label!r} was not kept for confirmation")
        started = time.perf_counter()
        runtime = self.quantizer.confirm_runtime
        try:
            session = self.quantizer.confirm_session(evaluation.artifact_dir, self.config.confirm)
        except ToolchainError as exc:  # the backend's own runtime refuses the candidate (HTP cannot finalize a 16-bit op)
            conditions, failures, score = {}, [f"cannot run there: {exc.message}"], math.inf
        else:
            conditions, failures, score, _ = self.stream(session, self.confirm_held)
        self.confirmations += 1
        evaluation.confirmed = {
            "runtime": runtime,
            "passed": not failures,
            "score": score,
            "conditions": conditions,
            "failures": failures,
        }
        evaluation.confirm_seconds = time.perf_counter() - started
        verdict = "holds there" if not failures else "misses the goal there" + (", the search goes on" if evaluation.passed else "")
        self.ctx.log(
            f"{self.config.variant}: confirmed {evaluation.label} on {runtime}: "
            + ", ".join(f"{name} {_headline(c)}" for name, c in conditions.items())
            + f" - {verdict}"
        )
        if failures and evaluation.passed:
            evaluation.passed = False
            evaluation.failures = [f"on {runtime}: {f}" for f in failures]

    def accepted(self, evaluation: Evaluation) -> bool:
        """It meets the goal: streamed on the search runtime and, where that is a proxy, confirmed on the backend's own."""
        return evaluation.passed and (not self.confirming or bool(evaluation.confirmed and evaluation.confirmed["passed"]))


def confirmed_search(s: _Search, states: list[Unit], ranked_ops: list[str], methods: tuple[str, ...]) -> tuple[Evaluation, dict[str, dict]]:
    """`search`, then (where the search runtime is a proxy) the chosen candidate confirmed on the backend's own runtime;
    one that misses there now fails, and the search is run again: the evaluations it streamed are replayed from
    `seen`, so it goes on from that candidate with new units. Ends at a confirmed candidate, a candidate that fails
    on the proxy too (reported unmet, its figures on the backend's runtime recorded all the same), or
    `max_confirmations`: the proxy has misled that often, so of the candidates streamed on the backend's own runtime
    the one closest to the goal there is kept (unmet) rather than a new proxy pick nobody ran there."""
    while True:
        chosen, effects = search(s, states, ranked_ops, methods)
        if not s.confirming or chosen.confirmed is not None:
            return chosen, effects
        if s.confirmations >= s.config.max_confirmations:
            ran_there = [e for e in s.evaluations if e.confirmed is not None]
            return min(ran_there, key=lambda e: (round(e.confirmed["score"], 9), e.size_bytes)), effects
        proxy_passed = chosen.passed
        s.confirm(chosen)
        if chosen.passed or not proxy_passed:
            return chosen, effects


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
    # 13: candidates are judged with the range bound's glitch allowance (gates.QUANTIZED_GLITCHES), as verification is;
    # 12: timings.json carries the stock and the chosen candidate's median call (the recipe's latency cost);
    # 11: out of confirmations, the best candidate run on the backend's own runtime is kept;
    # 10: log-probability CTC outputs compare as posteriors, as verification does
    version = "13"
    tools = ("numpy", "torch")
    Config = SearchConfig

    @classmethod
    def key_tools(cls, config: SearchConfig) -> tuple[str, ...]:
        from pipeline.backends import get_backend

        return cls.tools + get_backend(config.backend).tools

    @classmethod
    def run(cls, config: SearchConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        from pipeline.backends import get_backend
        from pipeline.export.session import TorchSession
        from pipeline.verify.records import load_calibration
        from pipeline.verify.gates import model_tolerance

        quantizer = get_backend(config.backend).load_quantizer()
        torch_dir = inputs["torch"].path
        tolerance = (
            config.default_tolerance.merged(model_tolerance(torch_dir, config.precision)).merged(config.goal).merged(config.tolerance_override)
        )
        reference = TorchSession(torch_dir)
        spec = reference.spec
        held = [_held(data, reference, ctx) for data in config.data]
        confirm_held = held
        if quantizer.confirm_runtime and config.confirm_seconds is not None:  # the confirming runtime is the slow one
            confirm_held = [_held(_shorter(data, config.confirm_seconds), reference, ctx) for data in config.data]

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
        # a front end of its own only where the model computes it from raw audio (a log-mel input arrives as features)
        states += [Unit(kind="frontend", name=i.name) for i in spec.inputs] if space.frontends and spec.frontend.kind == "pcm" else []
        ranked_ops = [f["node"] for f in sensitivity]

        scratch = Path(tempfile.mkdtemp(prefix="speechport-search-"))
        try:
            state = _Search(config, inputs, ctx, quantizer, tolerance, held, scratch, stage_config, confirm_held)
            chosen, effects = confirmed_search(state, states, ranked_ops, space.methods)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        stock = state.evaluations[0]
        recipe = chosen.recipe.model_copy(update={"source": "search"})
        (out / RECIPE_FILE).write_text(recipe.model_dump_json(indent=1) + "\n")
        confirmation = {
            "runtime": quantizer.confirm_runtime,
            "held_out": {h.name: {"seconds": h.stream.seconds, "steps": len(h.stream.chunks)} for h in confirm_held},
            "confirmations_run": state.confirmations,
        }
        summary = {
            "variant": config.variant,
            "goal": tolerance.model_dump(exclude_none=True, include=GOAL_FIGURES),
            "searched_to": state.closed_loop.model_dump(exclude_none=True, include=GOAL_FIGURES),
            "met": state.accepted(chosen),
            "kept_at": quantizer.higher(config.precision),
            "held_out": {h.name: {"seconds": h.stream.seconds, "steps": len(h.stream.chunks)} for h in held},
            "evaluations_run": len(state.evaluations),
            "before": stock.conditions,
            "after": chosen.conditions,
            **({"confirmed": chosen.confirmed} if chosen.confirmed is not None else {}),
            **({"confirmation": confirmation} if state.confirming else {}),
            "cost": {"size_bytes": chosen.size_bytes - stock.size_bytes, "stock_size_bytes": stock.size_bytes},
            "effects": effects,
            "sensitivity": sensitivity,
            "evaluations": [e.record() for e in state.evaluations],
        }
        (out / SEARCH_FILE).write_text(json.dumps(summary, indent=1) + "\n")
        timings = {
            "sensitivity_seconds": sensitivity_seconds,
            "evaluation_seconds": [e.seconds for e in state.evaluations],
            "confirmation_seconds": [e.confirm_seconds for e in state.evaluations if e.confirm_seconds is not None],
            # what the recipe costs in latency, stock and chosen streamed over the same held-out speech on one runtime
            "latency": {
                "runtime": quantizer.search_runtime or get_backend(config.backend).runtime_label or config.backend,
                "stock_call_ms_p50": stock.call_ms_p50,
                "chosen_call_ms_p50": chosen.call_ms_p50,
            },
        }
        (out / TIMINGS_FILE).write_text(json.dumps(timings, indent=1) + "\n")
        runtime = quantizer.confirm_runtime
        if state.accepted(chosen):
            note = f", confirmed on {runtime}" if state.confirming else ""
        elif chosen.confirmed is not None and not chosen.confirmed["passed"]:
            note = f" (goal NOT met on held-out speech on {runtime})"
        else:
            note = " (goal NOT met on held-out speech)"
        ctx.log(f"{config.variant}: {recipe.describe()} after {len(state.evaluations)} evaluations{note}")


def _held(data: StreamData, reference: Any, ctx: StageContext) -> _Held:
    """One held-out condition: its stream, PyTorch's outputs on it and PyTorch's transcript (CTC models)."""
    from pipeline.audio.stream import speech_stream

    spec = reference.spec
    stream = speech_stream(data, spec)
    outputs, _ = reference.stream(stream.chunks, ctx.progress, f"{ctx.node_id}: torch ({data.condition})")
    transcript = None
    ctc = [o for o in spec.outputs if o.kind == "ctc_logits"]
    if ctc and spec.decoder is not None and spec.decoder.kind == "ctc_greedy":
        from pipeline.audio.ctc import ctc_greedy
        from pipeline.verify.metrics import per_frame

        transcript = ctc_greedy(per_frame(outputs[ctc[0].name], ctc[0].time_axis), spec.decoder.vocabulary, spec.decoder.blank)
    return _Held(data.condition, stream, outputs, transcript)


def _shorter(data: StreamData, seconds: float) -> StreamData:
    return data.replaced(max_seconds=seconds if data.max_seconds is None else min(seconds, data.max_seconds))
