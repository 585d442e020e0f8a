"""The executor: runs every node of a `pipeline.dag.Graph` at most once per cache key.

`execute` keeps going past a failing stage: its dependents are skipped, a gather node (the report)
still runs on what exists, and the `Build` it returns lists every failure with its kind. With
`jobs > 1` independent stages run in spawned worker processes, with the same keys and, for every
stage whose bytes depend only on its key, the same artifacts. A worker finds `_build_in_worker`
and the job it unpickles by their path in this module, so they stay at module level.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.cache import Artifact, Cache
from pipeline.dag import LAST_FAILURE, Graph, Node, StageContext, StageFailure, first_line, key_document, key_of
from pipeline.errors import InternalError, UserError

T = TypeVar("T")


@dataclass
class BuildEvents:
    """Hooks the CLI uses to show progress; the defaults are silent.

    `finished` is called for built and hit nodes, `failed` for failed and skipped ones. With
    `jobs > 1`, `started` means submitted to the pool and `progress` is not called (bars cannot
    cross processes); a worker's `log` messages arrive when its node completes.
    """

    started: Callable[[str], None] = lambda node_id: None
    finished: Callable[[str, bool, float, str], None] = lambda node_id, hit, seconds, note: None
    progress: Callable[[Iterable[Any], str, int | None], Iterator[Any]] = lambda items, description, total: iter(items)
    log: Callable[[str], None] = lambda message: None
    failed: Callable[[str, StageFailure], None] = lambda node_id, failure: None


class Build(Mapping[str, Artifact]):
    """The artifacts of the nodes that were built or hit, by node id, and why every other node has none."""

    def __init__(self, artifacts: dict[str, Artifact], failures: dict[str, StageFailure]) -> None:
        self.artifacts = artifacts
        self.failures = failures

    def __getitem__(self, node_id: str) -> Artifact:
        try:
            return self.artifacts[node_id]
        except KeyError:
            failure = self.failures.get(node_id)
            if failure is None:
                raise
            raise KeyError(f"node {node_id!r} has no artifact: {failure.kind}: {first_line(failure.message)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.artifacts)

    def __len__(self) -> int:
        return len(self.artifacts)

    def __repr__(self) -> str:
        return f"Build({len(self.artifacts)} artifacts, failed: {sorted(self.failures) or 'none'})"


def failure_exit_code(failures: Mapping[str, StageFailure]) -> int | None:
    """The exit code of a build that had these failures, None if it had none.

    A bug outranks bad input, which outranks a broken tool: the most actionable report wins.
    """
    if not failures:
        return None
    codes = {failure.exit_code for failure in failures.values()}
    precedence = (InternalError.exit_code, UserError.exit_code, TOOLCHAIN_EXIT_CODE)
    return next((code for code in precedence if code in codes), InternalError.exit_code)


# pipeline.errors.ToolchainError's code; matched by value, so any error that declares itself a
# toolchain failure is one, whichever module defines its class
TOOLCHAIN_EXIT_CODE = 4

_TOOLCHAIN_DETAILS = ("tool", "tool_version", "variant", "op")


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def _failure_of(node: Node, exc: BaseException) -> StageFailure:
    """Classify what a stage raised; plain strings only, so a failure built in a worker pickles."""
    if isinstance(exc, UserError):
        return StageFailure(node.id, node.stage.name, "user", str(exc), UserError.exit_code)
    if getattr(exc, "exit_code", None) == TOOLCHAIN_EXIT_CODE:
        details = {name: _plain(getattr(exc, name)) for name in _TOOLCHAIN_DETAILS if getattr(exc, name, None) is not None}
        return StageFailure(node.id, node.stage.name, "toolchain", str(exc), TOOLCHAIN_EXIT_CODE, details=details)
    message = str(exc) if isinstance(exc, InternalError) else f"{type(exc).__name__}: {exc}"
    text = "".join(traceback.format_exception(exc))
    return StageFailure(node.id, node.stage.name, "internal", message, InternalError.exit_code, traceback=text)


def _skipped(node: Node, upstream: StageFailure, failures: Mapping[str, StageFailure]) -> StageFailure:
    root = failures[upstream.cause] if upstream.kind == "skipped" and upstream.cause else upstream
    details = {"cause_kind": root.kind, "cause_stage": root.stage, **root.details}
    return StageFailure(node.id, node.stage.name, "skipped", root.message, root.exit_code, cause=root.node_id, details=details)


@dataclass(frozen=True)
class _Job:
    """One node ready to build: everything a worker process needs, picklable."""

    node: Node
    inputs: dict[str, Artifact]
    failures: dict[str, StageFailure]  # gather nodes only: role -> failure of that upstream
    document: dict[str, Any]
    key: str


@dataclass(frozen=True)
class _Outcome:
    artifact: Artifact | None
    failure: StageFailure | None
    hit: bool  # found under the lock: a concurrent build made it
    note: str
    seconds: float
    logs: tuple[str, ...] = ()  # a worker's ctx.log messages, replayed by the parent


def _silent_progress(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    return iter(items)


def _build(
    job: _Job, cache: Cache, target: str, progress: Callable[[Iterable[Any], str, int | None], Iterator[Any]], log: Callable[[str], None]
) -> _Outcome:
    """Build one node under its key's lock, or find it built meanwhile. A stage's Exception becomes a failure."""
    node, started = job.node, time.perf_counter()
    try:
        with cache.lock(node.stage.name, job.key):
            artifact, why = cache.lookup(node.stage.name, job.key)  # another build may have made it meanwhile
            if artifact is not None:
                return _Outcome(artifact, None, True, "built by a concurrent build", time.perf_counter() - started)
            with cache.staging(node.stage.name, job.key) as tmp:
                node.stage.run(node.config, job.inputs, tmp, StageContext(node.id, progress, log, job.failures))
                record = {
                    "node": node.id,
                    "target": target,
                    "seconds": round(time.perf_counter() - started, 3),
                    "finished_unix": time.time(),
                    "python": platform.python_version(),
                    "host": platform.node(),
                }
                artifact = cache.publish(tmp, node.stage.name, job.key, job.document, record)
            note = why if why.startswith("corrupt") else ""
            return _Outcome(artifact, None, False, note, time.perf_counter() - started)
    except Exception as exc:  # recorded and reported by execute, not swallowed; KeyboardInterrupt still propagates
        return _Outcome(None, _failure_of(node, exc), False, "", time.perf_counter() - started)


def _init_worker() -> None:
    # runs before the first job unpickles (and so imports) any stage: two workers on two cores must
    # not each start an OpenMP pool the size of the machine
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _build_in_worker(job: _Job, cache_root: Path, target: str) -> _Outcome:
    logs: list[str] = []
    outcome = _build(job, Cache(cache_root), target, _silent_progress, logs.append)
    return dataclasses.replace(outcome, logs=tuple(logs))


class _Run:
    """The state of one execute: what was built, what failed, and the bookkeeping each outcome needs."""

    def __init__(self, graph: Graph, cache: Cache, target: str, events: BuildEvents) -> None:
        self.graph, self.cache, self.target, self.events = graph, cache, target, events
        self.built: dict[str, Artifact] = {}
        self.failures: dict[str, StageFailure] = {}

    def resolved(self, node_id: str) -> bool:
        return node_id in self.built or node_id in self.failures

    def prepare(self, node: Node) -> _Job | None:
        """The job for a node whose upstreams are resolved, or None if it is skipped (recorded here)."""
        failed = {role: self.failures[dep] for role, dep in node.inputs if dep in self.failures}
        if failed and not node.gather:
            self.fail(node.id, _skipped(node, next(iter(failed.values())), self.failures), None)
            return None
        inputs = {role: self.built[dep] for role, dep in node.inputs if dep in self.built}
        failed = {role: dataclasses.replace(f, traceback=None) for role, f in failed.items()}
        document = key_document(node, {role: a.digest for role, a in inputs.items()}, failed)
        return _Job(node, inputs, failed, document, key_of(document))

    def hit(self, job: _Job) -> bool:
        artifact, _ = self.cache.lookup(job.node.stage.name, job.key)
        if artifact is not None:
            self.events.finished(job.node.id, True, 0.0, "")
            self.succeed(job, artifact)
        return artifact is not None

    def complete(self, job: _Job, outcome: _Outcome) -> None:
        for message in outcome.logs:
            self.events.log(message)
        if outcome.failure is not None:
            self.fail(job.node.id, outcome.failure, job.document)
            return
        assert outcome.artifact is not None
        self.events.finished(job.node.id, outcome.hit, outcome.seconds, outcome.note)
        self.succeed(job, outcome.artifact)

    def succeed(self, job: _Job, artifact: Artifact) -> None:
        self.cache.remember(self.target, job.node.id, job.document)
        self.built[job.node.id] = artifact

    def fail(self, node_id: str, failure: StageFailure, document: dict[str, Any] | None) -> None:
        self.failures[node_id] = failure
        if document is not None:
            # explain cannot run the stage, so this is how it knows the same key failed last time
            marker = {"kind": failure.kind, "message": failure.message, "exit_code": failure.exit_code}
            self.cache.remember(self.target, node_id, {**document, LAST_FAILURE: marker})
        self.events.failed(node_id, failure)

    def result(self) -> Build:
        order = self.graph.order  # not completion order, so a parallel build reads like a sequential one
        return Build(
            {n: self.built[n] for n in order if n in self.built}, {n: self.failures[n] for n in order if n in self.failures}
        )


def execute(graph: Graph, cache: Cache, target: str, events: BuildEvents | None = None, jobs: int = 1) -> Build:
    """Build every node of `graph` that is not cached, keeping going past failures; `jobs` stages at a time."""
    if not isinstance(jobs, int) or jobs < 1:
        raise InternalError(f"execute: jobs must be an integer >= 1, got {jobs!r}")
    run = _Run(graph, cache, target, events or BuildEvents())
    if jobs == 1:
        for node_id in graph.order:
            job = run.prepare(graph.nodes[node_id])
            if job is None or run.hit(job):
                continue
            run.events.started(node_id)
            run.complete(job, _build(job, cache, target, run.events.progress, run.events.log))
    else:
        _execute_parallel(run, jobs)
    return run.result()


class _Pool:
    """A spawn process pool created on first use and replaced if a worker dies."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.executor: Any = None

    def submit(self, job: _Job, cache_root: Path, target: str) -> Future:
        from concurrent.futures.process import BrokenProcessPool

        for _ in range(2):
            if self.executor is None:
                self.executor = self._new()
            try:
                return self.executor.submit(_build_in_worker, job, cache_root, target)
            except BrokenProcessPool:
                self.discard()  # the futures of its in-flight jobs fail on their own
        raise InternalError(f"cannot submit {job.node.id!r}: a fresh worker pool broke at once")

    def _new(self) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: stages import torch/TensorFlow, whose threads do not survive a fork. Workers
        # are reused (a fresh process per stage costs a torch import each, 4x the tiny graph's time)
        return ProcessPoolExecutor(max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)

    def discard(self, cancel: bool = False) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=cancel)
            self.executor = None

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None


def _execute_parallel(run: _Run, jobs: int) -> None:
    """Resolve hits and skips here; send every ready miss, in graph order, to the pool."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    graph, position = run.graph, {node_id: k for k, node_id in enumerate(run.graph.order)}
    waiting: list[str] = list(graph.order)
    running: dict[Future, _Job] = {}
    pool = _Pool(jobs)
    try:
        while waiting or running:
            still_waiting = []
            for node_id in waiting:  # in topological order, so a hit or skip here readies later nodes in the same pass
                node = graph.nodes[node_id]
                if not all(run.resolved(dep) for dep in node.upstream):
                    still_waiting.append(node_id)
                    continue
                job = run.prepare(node)
                if job is None or run.hit(job):
                    continue
                run.events.started(node_id)
                running[pool.submit(job, run.cache.root, run.target)] = job
            waiting = still_waiting
            if not running:
                if waiting:
                    raise InternalError(f"execute: nothing running but {waiting[0]!r} still waits; the graph check missed a cycle")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: position[running[f].node.id]):
                job = running.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # the job never ran to an outcome: a dead worker, an unpicklable input
                    if isinstance(exc, BrokenProcessPool):
                        pool.discard()
                    outcome = _Outcome(None, _failure_of(job.node, exc), False, "", 0.0)
                run.complete(job, outcome)
    except BaseException:
        pool.discard(cancel=True)
        raise
    pool.close()
