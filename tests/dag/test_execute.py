"""execute keeps going past failures, tells a gather node what failed, and runs independent stages at once.

The stages here are tiny and torch-free. They live in this module, which spawned workers import as
`tests.dag.test_execute` (pytest's importlib mode with pythonpath ["."]).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from pipeline import dag

from pipeline import execute as executor
from pipeline.cache import Artifact, Cache
from pipeline.errors import InternalError, ToolchainError, UserError


class TextConfig(dag.StageConfig):
    text: str = Field(description="what this node contributes to its output")


class TextStage(dag.Stage):
    """Writes its text followed by its inputs' texts, so every output depends on everything upstream."""

    name = "text"
    version = "1"
    Config = TextConfig

    @classmethod
    def run(cls, config: TextConfig, inputs: dict[str, Artifact], out: Path, ctx: dag.StageContext) -> None:
        upstream = [f"{role}={(inputs[role].path / 'text.txt').read_text()}" for role in sorted(inputs)]
        (out / "text.txt").write_text(" ".join([config.text, *upstream]))
        ctx.log(f"{ctx.node_id} wrote {config.text}")


class RaiseConfig(dag.StageConfig):
    raises: Literal["user", "toolchain", "internal", "other", "interrupt"] = Field(description="which exception to raise")
    message: str = Field(default="it broke", description="the exception's message")


class RaiseStage(dag.Stage):
    name = "raise"
    version = "1"
    Config = RaiseConfig

    @classmethod
    def run(cls, config: RaiseConfig, inputs: dict[str, Artifact], out: Path, ctx: dag.StageContext) -> None:
        (out / "partial.txt").write_text("never published")
        if config.raises == "user":
            raise UserError(config.message, where="m.yaml: model.checkpoint")
        if config.raises == "toolchain":
            raise ToolchainError(config.message, tool="onnx", stage="tflite", variant="litert-int8@20ms", op="GRU")
        if config.raises == "internal":
            raise InternalError(config.message)
        if config.raises == "interrupt":
            raise KeyboardInterrupt
        raise KeyError(config.message)


class GatherConfig(dag.StageConfig):
    title: str = Field(default="report", description="heading of the summary")


class GatherStage(dag.Stage):
    """Like the report: summarises what exists and what failed."""

    name = "gather"
    version = "1"
    Config = GatherConfig

    @classmethod
    def run(cls, config: GatherConfig, inputs: dict[str, Artifact], out: Path, ctx: dag.StageContext) -> None:
        summary = {
            "built": {role: (a.path / "text.txt").read_text() for role, a in sorted(inputs.items())},
            "failed": {role: {**f.to_json(), "has_traceback": f.traceback is not None} for role, f in ctx.failures.items()},
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))


class BarrierConfig(dag.StageConfig):
    rendezvous: str = Field(description="directory both stages of a pair write their arrival into")
    me: str = Field(description="this stage's name in the rendezvous")
    peer: str = Field(description="the stage this one waits for")


class BarrierStage(dag.Stage):
    """Arrives, then waits for its peer: only finishes if the two run at the same time."""

    name = "barrier"
    version = "1"
    Config = BarrierConfig

    @classmethod
    def run(cls, config: BarrierConfig, inputs: dict[str, Artifact], out: Path, ctx: dag.StageContext) -> None:
        rendezvous = Path(config.rendezvous)
        (rendezvous / config.me).write_text(str(os.getpid()))
        deadline = time.time() + 120  # a deadlock guard for a sequential run, not a timing assertion
        while not (rendezvous / config.peer).exists():
            if time.time() > deadline:
                raise InternalError(f"{config.me}: peer {config.peer} never started; the stages did not run in parallel")
            time.sleep(0.01)
        record = {"pid": os.getpid(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
        (out / "worker.json").write_text(json.dumps(record))


@dataclass
class Recorder:
    started: list[str] = field(default_factory=list)
    finished: dict[str, bool] = field(default_factory=dict)
    failed: dict[str, dag.StageFailure] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)

    def events(self) -> executor.BuildEvents:
        return executor.BuildEvents(
            started=self.started.append,
            finished=lambda node_id, hit, seconds, note: self.finished.__setitem__(node_id, hit),
            failed=self.failed.__setitem__,
            log=self.logs.append,
        )


def text(node_id: str, *inputs: tuple[str, str]) -> dag.Node:
    return dag.Node(node_id, TextStage, TextConfig(text=node_id), tuple(inputs))


def broken_graph(raises: str = "toolchain", message: str = "op GRU has no TFLite kernel") -> dag.Graph:
    """b fails first in order; its sibling a and a's dependent e still build; c and d follow b down."""
    return dag.Graph(
        [
            dag.Node("b", RaiseStage, RaiseConfig(raises=raises, message=message)),  # type: ignore[arg-type]
            text("a"),
            text("c", ("model", "b")),
            text("d", ("model", "c")),
            text("e", ("model", "a")),
            dag.Node("report", GatherStage, GatherConfig(), (("e", "e"), ("d", "d"), ("b", "b")), gather=True),
        ]
    )


def diamond() -> dag.Graph:
    return dag.Graph([text("top"), text("left", ("up", "top")), text("right", ("up", "top")), text("bottom", ("l", "left"), ("r", "right"))])


@pytest.mark.parametrize("jobs", [1, 2])
def test_failure_skips_dependents_builds_siblings_and_reaches_the_gather_node(tmp_path: Path, jobs: int) -> None:
    graph = broken_graph()
    assert graph.order.index("b") < graph.order.index("a"), "the failure must come first to show the build goes on"
    recorder = Recorder()
    build = executor.execute(graph, Cache(tmp_path / "cache"), "t", recorder.events(), jobs=jobs)

    assert set(build) == {"a", "e", "report"}
    assert list(build.failures) == [n for n in graph.order if n in {"b", "c", "d"}]
    b = build.failures["b"]
    assert (b.kind, b.exit_code, b.stage) == ("toolchain", 4, "raise")
    for skipped in ("c", "d"):
        failure = build.failures[skipped]
        assert (failure.kind, failure.cause, failure.exit_code, failure.message) == ("skipped", "b", 4, b.message), failure
        assert failure.details["cause_kind"] == "toolchain" and failure.details["op"] == "GRU"
    assert recorder.failed == build.failures
    assert set(recorder.finished) == {"a", "e", "report"} and not any(recorder.finished.values())
    assert "c" not in recorder.started and "d" not in recorder.started  # skipped nodes never start
    assert "a wrote a" in recorder.logs  # replayed from the worker when jobs > 1
    with pytest.raises(KeyError, match="'c' has no artifact: skipped"):
        build["c"]

    summary = json.loads((build["report"].path / "summary.json").read_text())
    assert summary["built"] == {"e": "e model=a"}
    assert set(summary["failed"]) == {"b", "d"}
    # the role's own upstream stays visible; the message is the root cause's
    assert summary["failed"]["d"]["node_id"] == "d" and summary["failed"]["d"]["cause"] == "b"
    assert summary["failed"]["d"]["message"] == b.message
    assert summary["failed"]["b"]["kind"] == "toolchain"
    assert not any(f["has_traceback"] for f in summary["failed"].values())
    # nothing of the failed stage was published
    assert [p for p in (tmp_path / "cache" / "objects" / "raise").iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("raises", "kind", "exit_code"),
    [("user", "user", 2), ("toolchain", "toolchain", 4), ("internal", "internal", 3), ("other", "internal", 3)],
)
def test_each_exception_maps_to_its_kind_and_exit_code(tmp_path: Path, raises: str, kind: str, exit_code: int) -> None:
    build = executor.execute(broken_graph(raises, "the message"), Cache(tmp_path / "cache"), "t")
    failure = build.failures["b"]
    assert (failure.kind, failure.exit_code) == (kind, exit_code)
    assert "the message" in failure.message
    assert build.failures["c"].exit_code == exit_code
    assert executor.failure_exit_code(build.failures) == exit_code
    if kind == "internal":
        assert failure.traceback is not None and "RaiseStage" not in failure.message and "in run" in failure.traceback
    else:
        assert failure.traceback is None
    if raises == "other":
        assert failure.message == "KeyError: 'the message'"
    if raises == "user":
        assert failure.message.startswith("m.yaml: model.checkpoint: the message")
    if kind == "toolchain":
        assert {k: failure.details[k] for k in ("tool", "variant", "op")} == {"tool": "onnx", "variant": "litert-int8@20ms", "op": "GRU"}
        assert "tool_version" in failure.details
    plain = failure.to_json()
    assert "traceback" not in plain and json.loads(json.dumps(plain)) == plain
    assert plain["kind"] == kind and plain["node_id"] == "b"


def test_exit_code_precedence_is_internal_then_user_then_toolchain() -> None:
    def failure(kind: str, code: int) -> dag.StageFailure:
        return dag.StageFailure(kind, "s", kind, "m", code)  # type: ignore[arg-type]

    assert executor.TOOLCHAIN_EXIT_CODE == ToolchainError.exit_code
    assert executor.failure_exit_code({}) is None
    assert executor.failure_exit_code({"t": failure("toolchain", 4)}) == 4
    assert executor.failure_exit_code({"t": failure("toolchain", 4), "u": failure("user", 2)}) == 2
    assert executor.failure_exit_code({"t": failure("toolchain", 4), "u": failure("user", 2), "i": failure("internal", 3)}) == 3


def test_keyboard_interrupt_still_stops_the_build(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        executor.execute(broken_graph("interrupt"), Cache(tmp_path / "cache"), "t")


def test_jobs_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(InternalError, match="jobs must be an integer >= 1, got 0"):
        executor.execute(diamond(), Cache(tmp_path / "cache"), "t", jobs=0)


def test_parallel_build_makes_the_same_artifacts_as_a_sequential_one(tmp_path: Path) -> None:
    sequential = executor.execute(diamond(), Cache(tmp_path / "one"), "t", jobs=1)
    recorder = Recorder()
    parallel = executor.execute(diamond(), Cache(tmp_path / "two"), "t", recorder.events(), jobs=2)
    assert {n: a.digest for n, a in parallel.items()} == {n: a.digest for n, a in sequential.items()}
    assert len(parallel) == 4 and not parallel.failures
    for node_id in sequential:
        assert (parallel[node_id].path / "text.txt").read_bytes() == (sequential[node_id].path / "text.txt").read_bytes()
        assert parallel[node_id].key == sequential[node_id].key
    assert (parallel["bottom"].path / "text.txt").read_text() == "bottom l=left up=top r=right up=top"
    assert sorted(recorder.started) == sorted(recorder.finished) == sorted(diamond().order)
    assert sorted(recorder.logs) == sorted(f"{n} wrote {n}" for n in diamond().order)
    assert list(parallel) == diamond().order  # graph order, not completion order


def test_independent_stages_run_at_the_same_time_in_separate_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    nodes = [
        dag.Node("left", BarrierStage, BarrierConfig(rendezvous=str(rendezvous), me="left", peer="right")),
        dag.Node("right", BarrierStage, BarrierConfig(rendezvous=str(rendezvous), me="right", peer="left")),
    ]
    build = executor.execute(dag.Graph(nodes), Cache(tmp_path / "cache"), "t", jobs=2)
    assert not build.failures, {n: f.message for n, f in build.failures.items()}
    workers = [json.loads((build[n].path / "worker.json").read_text()) for n in ("left", "right")]
    pids = {w["pid"] for w in workers}
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(w["omp_num_threads"] == "1" for w in workers)
    assert "OMP_NUM_THREADS" not in os.environ  # set in the workers only


def test_gather_key_follows_the_failure_message_and_is_unchanged_without_failures(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    first = executor.execute(broken_graph(message="op GRU has no kernel"), cache, "t")
    recorder = Recorder()
    again = executor.execute(broken_graph(message="op GRU has no kernel"), cache, "t", recorder.events())
    assert again["report"].key == first["report"].key and recorder.finished["report"] is True
    assert "b" in recorder.failed and "b" in recorder.started  # failures are not cached: b runs again
    changed = executor.execute(broken_graph(message="op LSTM has no kernel"), cache, "t")
    assert changed["report"].key != first["report"].key
    failed_inputs = json.loads((changed["report"].path / "key.json").read_text())["failed_inputs"]
    assert failed_inputs["b"] == {
        "node": "b", "stage": "raise", "kind": "toolchain", "message": changed.failures["b"].message,
        "details": changed.failures["b"].details,
    }
    assert failed_inputs["d"]["cause"] == "b" and failed_inputs["d"]["kind"] == "skipped"
    # with nothing failed, the gather node's key is made exactly as any other node's
    fixed = dag.Graph([text("a"), dag.Node("report", GatherStage, GatherConfig(), (("a", "a"),), gather=True)])
    built = executor.execute(fixed, cache, "t")
    document = json.loads((built["report"].path / "key.json").read_text())
    assert "failed_inputs" not in document
    assert built["report"].key == dag.key_of(dag.key_document(fixed.nodes["report"], {"a": built["a"].digest}))


def test_explain_names_the_input_that_failed_in_the_last_build(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    graph = broken_graph(raises="user", message="checkpoint is empty")
    executor.execute(graph, cache, "t")
    statuses = {s.node_id: s for s in dag.explain(graph, cache, "t")}
    assert statuses["a"].hit and statuses["e"].hit
    assert statuses["b"].reasons == ("failed in the last build (user): m.yaml: model.checkpoint: checkpoint is empty",)
    assert statuses["c"].reasons == ("input b failed in the last build",)
    assert statuses["d"].reasons == ("input c will be rebuilt",)
    assert not statuses["report"].hit and "input b failed in the last build" in statuses["report"].reasons


@pytest.mark.parametrize("jobs", [1, 2])
def test_second_execute_is_all_hits(tmp_path: Path, jobs: int) -> None:
    cache = Cache(tmp_path / "cache")
    first = executor.execute(diamond(), cache, "t", jobs=jobs)
    recorder = Recorder()
    second = executor.execute(diamond(), cache, "t", recorder.events(), jobs=jobs)
    assert recorder.started == [] and recorder.finished == {n: True for n in diamond().order}
    assert {n: a.digest for n, a in second.items()} == {n: a.digest for n, a in first.items()}
    assert all(s.hit for s in dag.explain(diamond(), cache, "t"))


def test_gather_node_without_failures_sees_none(tmp_path: Path) -> None:
    graph = dag.Graph([text("a"), dag.Node("report", GatherStage, GatherConfig(), (("a", "a"),), gather=True)])
    build = executor.execute(graph, Cache(tmp_path / "cache"), "t")
    assert json.loads((build["report"].path / "summary.json").read_text()) == {"built": {"a": "a"}, "failed": {}}

