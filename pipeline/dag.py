"""Stages, the graph of them, and the cache key of each node.

A stage is a pure function of (its typed config, its input artifacts, the versions of the tools
it calls) to one output directory. Its cache key is the SHA-256 of the canonical JSON of exactly
those things, so `explain` can say which of them changed.

The executor that runs each node at most once per key is `pipeline.execute`; it imports this
module, never the other way round.
"""

from __future__ import annotations

import difflib
import graphlib
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from pipeline.cache import Artifact, Cache, canonical_json, sha256_text
from pipeline.errors import InternalError

T = TypeVar("T")


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


FailureKind = Literal["user", "toolchain", "internal", "skipped"]


@dataclass(frozen=True)
class StageFailure:
    """Why a node has no artifact: its stage raised, or (kind "skipped") an upstream of it failed.

    A skipped node carries its root cause: `cause` is the node that failed, `message`, `exit_code`
    and `details` (plus `cause_kind`, `cause_stage`) are that node's.
    """

    node_id: str
    stage: str
    kind: FailureKind
    message: str
    exit_code: int
    cause: str | None = None
    traceback: str | None = None  # internal only: a bug report needs it, a cache key must not see it
    details: dict[str, Any] = field(default_factory=dict)  # toolchain: tool, tool_version, variant, op

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "stage": self.stage,
            "kind": self.kind,
            "message": self.message,
            "exit_code": self.exit_code,
            "cause": self.cause,
            "details": dict(self.details),
        }


@dataclass
class StageContext:
    """What a running stage may use besides its config and inputs: progress reporting and, for a
    gather node, the failures of the upstreams it runs without (role -> failure, no traceback)."""

    node_id: str
    progress: Callable[[Iterable[T], str, int | None], Iterator[T]] = field(
        default=lambda items, description, total: iter(items)  # type: ignore[assignment]
    )
    log: Callable[[str], None] = field(default=lambda message: None)
    failures: dict[str, StageFailure] = field(default_factory=dict)


class Stage:
    """Subclasses set the class attributes and implement `run`, writing only into `out`."""

    name: ClassVar[str]
    version: ClassVar[str]
    tools: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StageConfig]]

    @classmethod
    def key_tools(cls, config: Any) -> tuple[str, ...]:
        """Distributions whose versions are part of this node's key; a stage serving several backends adds theirs."""
        return cls.tools

    @classmethod
    def run(cls, config: Any, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Node:
    id: str
    stage: type[Stage]
    config: StageConfig
    inputs: tuple[tuple[str, str], ...] = ()  # (role, upstream node id)
    gather: bool = False  # runs on the inputs that exist when others failed (the report), see StageContext.failures

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


def key_document(
    node: Node, input_digests: dict[str, str], failed_inputs: Mapping[str, StageFailure] | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "stage": node.stage.name,
        "version": node.stage.version,
        "config": node.config.model_dump(mode="json"),
        "inputs": dict(sorted(input_digests.items())),
        "tools": {name: tool_version(name) for name in sorted(set(node.stage.key_tools(node.config)))},
    }
    if failed_inputs:
        # a gather node's output depends on what it was told failed; absent when nothing did, so
        # the keys of every build without failures stay what they were
        document["failed_inputs"] = {role: _failure_key(f) for role, f in sorted(failed_inputs.items())}
    return document


def _failure_key(failure: StageFailure) -> dict[str, Any]:
    """Everything of a failure a gather stage can see (all but the traceback it is never given)."""
    entry: dict[str, Any] = {"node": failure.node_id, "stage": failure.stage, "kind": failure.kind, "message": failure.message}
    if failure.cause is not None:
        entry["cause"] = failure.cause
    if failure.details:
        entry["details"] = failure.details
    return entry


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
    before_failed, after_failed = previous.get("failed_inputs") or {}, current.get("failed_inputs") or {}
    for role in sorted(set(before_failed) | set(after_failed)):
        was, now = before_failed.get(role), after_failed.get(role)
        if was == now:
            continue
        if now is None:
            reasons.append(f"input {role} no longer fails")
        elif was is None:
            reasons.append(f"input {role} failed: {first_line(now.get('message'))}")
        else:
            reasons.append(f"input {role} failure: {_short(was.get('message', '-'))} -> {_short(now.get('message', '-'))}")
    return reasons


def first_line(text: Any) -> str:
    return str(text).splitlines()[0] if text else "-"


LAST_FAILURE = "last_failure"  # marker in a failed node's remembered key document: the executor writes it, explain reads it


@dataclass(frozen=True)
class Status:
    node_id: str
    hit: bool
    reasons: tuple[str, ...]
    key: str | None


def explain(graph: Graph, cache: Cache, target: str) -> list[Status]:
    """Hit or miss for every node without running anything, and for each miss why."""
    digests: dict[str, str] = {}
    failed_last: set[str] = set()  # misses whose unchanged key failed in the last build
    statuses = []
    for node_id in graph.order:
        node = graph.nodes[node_id]
        stale = [dep for dep in node.upstream if dep not in digests]
        if stale:
            # the key is unknown until the inputs exist, but its own changes are already visible
            partial = key_document(node, {role: "(rebuilt)" for role, _ in node.inputs})
            previous = cache.previous(target, node_id)
            own = [r for r in key_changes(previous, partial) if not r.startswith("input ")] if previous else []
            reasons = tuple(
                f"input {dep} failed in the last build" if dep in failed_last else f"input {dep} will be rebuilt" for dep in stale
            ) + tuple(own)
            statuses.append(Status(node_id, False, reasons, None))
            continue
        document = key_document(node, {role: digests[dep] for role, dep in node.inputs})
        key = key_of(document)
        artifact, why = cache.lookup(node.stage.name, key)
        if artifact is not None:
            digests[node_id] = artifact.digest
            statuses.append(Status(node_id, True, (), key))
            continue
        previous = cache.previous(target, node_id)
        reasons = key_changes(previous, document)
        last_failure = previous.get(LAST_FAILURE) if previous else None
        if why.startswith("corrupt"):
            reasons = [f"cached artifact {why}"]
        elif not reasons and isinstance(last_failure, dict):
            failed_last.add(node_id)
            reasons = [f"failed in the last build ({last_failure.get('kind')}): {first_line(last_failure.get('message'))}"]
        elif not reasons:
            reasons = ["built before but no longer in the cache"]
        statuses.append(Status(node_id, False, tuple(reasons), key))
    return statuses
