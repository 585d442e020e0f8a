"""Stages, the graph of them, and the executor that runs each at most once per cache key.

A stage is a pure function of (its typed config, its input artifacts, the versions of the tools
it calls) to one output directory. Its cache key is the SHA-256 of the canonical JSON of exactly
those things, so `explain` can say which of them changed.
"""

from __future__ import annotations

import difflib
import graphlib
import importlib.metadata
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from pipeline.cache import Artifact, Cache, canonical_json, sha256_text
from pipeline.errors import InternalError

T = TypeVar("T")


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class StageContext:
    """What a running stage may use besides its config and inputs: progress reporting only."""

    node_id: str
    progress: Callable[[Iterable[T], str, int | None], Iterator[T]] = field(
        default=lambda items, description, total: iter(items)  # type: ignore[assignment]
    )
    log: Callable[[str], None] = field(default=lambda message: None)


class Stage:
    """Subclasses set the class attributes and implement `run`, writing only into `out`."""

    name: ClassVar[str]
    version: ClassVar[str]
    tools: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StageConfig]]

    @classmethod
    def run(cls, config: Any, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Node:
    id: str
    stage: type[Stage]
    config: StageConfig
    inputs: tuple[tuple[str, str], ...] = ()  # (role, upstream node id)

    @property
    def upstream(self) -> list[str]:
        return [dep for _, dep in self.inputs]


class Graph:
    """Nodes checked before anything runs: unique ids, known references, no cycles."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes: dict[str, Node] = {}
        for node in nodes:
            if node.id in self.nodes:
                raise InternalError(f"plan produced node {node.id!r} twice")
            self.nodes[node.id] = node
        for node in nodes:
            for role, dep in node.inputs:
                if dep not in self.nodes:
                    close = difflib.get_close_matches(dep, list(self.nodes), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise InternalError(f"node {node.id!r} input {role!r} names unknown node {dep!r}{hint}")
        sorter = graphlib.TopologicalSorter({n.id: set(n.upstream) for n in nodes})
        try:
            self.order: list[str] = list(sorter.static_order())
        except graphlib.CycleError as exc:
            raise InternalError(f"plan has a cycle: {' -> '.join(exc.args[1])}") from None

    def downstream(self, node_id: str) -> set[str]:
        found: set[str] = set()
        frontier = [node_id]
        while frontier:
            current = frontier.pop()
            for node in self.nodes.values():
                if current in node.upstream and node.id not in found:
                    found.add(node.id)
                    frontier.append(node.id)
        return found


@lru_cache(maxsize=None)
def tool_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def key_document(node: Node, input_digests: dict[str, str]) -> dict[str, Any]:
    return {
        "stage": node.stage.name,
        "version": node.stage.version,
        "config": node.config.model_dump(mode="json"),
        "inputs": dict(sorted(input_digests.items())),
        "tools": {name: tool_version(name) for name in sorted(node.stage.tools)},
    }


def key_of(document: dict[str, Any]) -> str:
    return sha256_text(canonical_json(document))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _short(value: Any) -> str:
    text = canonical_json(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:16] + "…" + text[-8:]


def key_changes(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """Why `current` differs from the last key built for the same node, in words."""
    if previous is None:
        return ["never built for this target"]
    reasons = []
    if previous.get("version") != current["version"]:
        reasons.append(f"stage version {previous.get('version')} -> {current['version']}")
    for kind in ("tools", "config", "inputs"):
        before, after = _flatten(previous.get(kind, {})), _flatten(current[kind])
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                label = {"tools": "tool version", "config": "config", "inputs": "input"}[kind]
                reasons.append(f"{label} {name}: {_short(before.get(name, '-'))} -> {_short(after.get(name, '-'))}")
    return reasons


@dataclass(frozen=True)
class Status:
    node_id: str
    hit: bool
    reasons: tuple[str, ...]
    key: str | None


def explain(graph: Graph, cache: Cache, target: str) -> list[Status]:
    """Hit or miss for every node without running anything, and for each miss why."""
    digests: dict[str, str] = {}
    statuses = []
    for node_id in graph.order:
        node = graph.nodes[node_id]
        stale = [dep for dep in node.upstream if dep not in digests]
        if stale:
            # the key is unknown until the inputs exist, but its own changes are already visible
            partial = key_document(node, {role: "(rebuilt)" for role, _ in node.inputs})
            previous = cache.previous(target, node_id)
            own = [r for r in key_changes(previous, partial) if not r.startswith("input ")] if previous else []
            reasons = tuple(f"input {dep} will be rebuilt" for dep in stale) + tuple(own)
            statuses.append(Status(node_id, False, reasons, None))
            continue
        document = key_document(node, {role: digests[dep] for role, dep in node.inputs})
        key = key_of(document)
        artifact, why = cache.lookup(node.stage.name, key)
        if artifact is not None:
            digests[node_id] = artifact.digest
            statuses.append(Status(node_id, True, (), key))
            continue
        reasons = key_changes(cache.previous(target, node_id), document)
        if why.startswith("corrupt"):
            reasons = [f"cached artifact {why}"]
        elif not reasons:
            reasons = ["built before but no longer in the cache"]
        statuses.append(Status(node_id, False, tuple(reasons), key))
    return statuses


@dataclass
class BuildEvents:
    """Hooks the CLI uses to show progress; the defaults are silent."""

    started: Callable[[str], None] = lambda node_id: None
    finished: Callable[[str, bool, float, str], None] = lambda node_id, hit, seconds, note: None
    progress: Callable[[Iterable[Any], str, int | None], Iterator[Any]] = lambda items, description, total: iter(items)
    log: Callable[[str], None] = lambda message: None


def execute(graph: Graph, cache: Cache, target: str, events: BuildEvents | None = None) -> dict[str, Artifact]:
    events = events or BuildEvents()
    built: dict[str, Artifact] = {}
    for node_id in graph.order:
        node = graph.nodes[node_id]
        inputs = {role: built[dep] for role, dep in node.inputs}
        document = key_document(node, {role: a.digest for role, a in inputs.items()})
        key = key_of(document)
        artifact, why = cache.lookup(node.stage.name, key)
        note = ""
        if artifact is None:
            events.started(node_id)
            started = time.perf_counter()
            with cache.lock(node.stage.name, key):
                artifact, why = cache.lookup(node.stage.name, key)  # another build may have made it meanwhile
                if artifact is None:
                    note = why if why.startswith("corrupt") else ""
                    with cache.staging(node.stage.name, key) as tmp:
                        ctx = StageContext(node_id, events.progress, events.log)
                        node.stage.run(node.config, inputs, tmp, ctx)
                        record = {
                            "node": node_id,
                            "target": target,
                            "seconds": round(time.perf_counter() - started, 3),
                            "finished_unix": time.time(),
                            "python": platform.python_version(),
                            "host": platform.node(),
                        }
                        artifact = cache.publish(tmp, node.stage.name, key, document, record)
                    events.finished(node_id, False, time.perf_counter() - started, note)
                else:
                    events.finished(node_id, True, time.perf_counter() - started, "built by a concurrent build")
        else:
            events.finished(node_id, True, 0.0, "")
        cache.remember(target, node_id, document)
        built[node_id] = artifact
    return built
