"""The cache: hits when nothing changed, misses exactly downstream of what did, never trusts damage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from pipeline import dag

from pipeline import execute as executor
from pipeline.cache import Artifact, Cache
from pipeline.manifest import load_manifest
from pipeline.plan import plan
from pipeline.export.to_onnx import OnnxStage
from tests.conftest import write_manifest


def build(manifest_path: Path, cache_dir: Path) -> tuple[dict, dict[str, bool]]:
    """Build; return the artifacts and, per node, whether it was a cache hit."""
    hits: dict[str, bool] = {}
    events = executor.BuildEvents(finished=lambda node_id, hit, seconds, note: hits.__setitem__(node_id, hit))
    graph = plan(load_manifest(manifest_path))
    return executor.execute(graph, Cache(cache_dir), "tiny", events), hits


def test_second_build_hits_everything(tmp_path: Path, tiny_manifest: dict, cache_dir: Path) -> None:
    path = write_manifest(tmp_path / "m.yaml", **tiny_manifest)
    first, hits = build(path, cache_dir)
    assert not any(hits.values())
    second, hits = build(path, cache_dir)
    assert all(hits.values()), hits
    assert {k: a.digest for k, a in first.items()} == {k: a.digest for k, a in second.items()}


def test_changed_config_misses_only_downstream(tmp_path: Path, tiny_manifest: dict, cache_dir: Path) -> None:
    path = write_manifest(tmp_path / "m.yaml", **tiny_manifest)
    build(path, cache_dir)
    changed = write_manifest(tmp_path / "m.yaml", **tiny_manifest, tolerances={"fp32": {"max_abs": 2e-5}})
    _, hits = build(changed, cache_dir)
    misses = {node for node, hit in hits.items() if not hit}
    assert misses == {"verify:onnxruntime-fp32@20ms", "verify-noisy:onnxruntime-fp32@20ms", "report"}


def test_changed_stage_version_reruns_the_stage_and_cuts_off_identical_output(
    tmp_path: Path, tiny_manifest: dict, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_manifest(tmp_path / "m.yaml", **tiny_manifest)
    build(path, cache_dir)
    monkeypatch.setattr(OnnxStage, "version", OnnxStage.version + "-next")
    graph = plan(load_manifest(path))
    statuses = {s.node_id: s for s in dag.explain(graph, Cache(cache_dir), "tiny")}
    version = OnnxStage.version.removesuffix("-next")
    assert any(r.startswith(f"stage version {version} -> {version}-next") for r in statuses["onnx@20ms"].reasons), statuses["onnx@20ms"].reasons
    assert statuses["trace@20ms"].hit and statuses["reference@20ms"].hit
    _, hits = build(path, cache_dir)
    # the new version wrote the same bytes, so everything keyed on those bytes is still valid
    assert {node for node, hit in hits.items() if not hit} == {"onnx@20ms"}


def test_changed_stage_version_with_new_bytes_misses_everything_downstream(
    tmp_path: Path, tiny_manifest: dict, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_manifest(tmp_path / "m.yaml", **tiny_manifest)
    build(path, cache_dir)
    original = OnnxStage.run.__func__

    def run_and_stamp(cls, config, inputs, out, ctx):
        import onnx

        original(cls, config, inputs, out, ctx)
        model = onnx.load(str(out / "model.onnx"))
        onnx.helper.set_model_props(model, {"exporter_revision": "next"})
        onnx.save(model, str(out / "model.onnx"))

    monkeypatch.setattr(OnnxStage, "version", OnnxStage.version + "-next")
    monkeypatch.setattr(OnnxStage, "run", classmethod(run_and_stamp))
    _, hits = build(path, cache_dir)
    misses = {node for node, hit in hits.items() if not hit}
    assert misses == {"onnx@20ms", "simplify@20ms", "verify:onnxruntime-fp32@20ms", "verify-noisy:onnxruntime-fp32@20ms", "report"}


def test_changed_tool_version_misses_the_stages_that_call_it(
    tmp_path: Path, tiny_manifest: dict, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_manifest(tmp_path / "m.yaml", **tiny_manifest)
    build(path, cache_dir)
    real = dag.tool_version
    monkeypatch.setattr(dag, "tool_version", lambda name: "99.0" if name == "torch" else real(name))
    graph = plan(load_manifest(path))
    statuses = {s.node_id: s for s in dag.explain(graph, Cache(cache_dir), "tiny")}
    assert f"tool version torch: {real('torch')} -> 99.0" in statuses["trace@20ms"].reasons
    _, hits = build(path, cache_dir)
    misses = {node for node, hit in hits.items() if not hit}
    # every stage that records torch reruns; simplify and verify (onnxruntime against recorded reference outputs)
    # do not call torch, and their input bytes are unchanged
    assert misses == {"trace@20ms", "onnx@20ms", "reference@20ms", "reference-noisy@20ms"}
    assert hits["simplify@20ms"] is True
    # verify wrote the same bytes but its wall clock (timings.json, outside the digest): the report's key holds
    assert hits["report"] is True


def test_corrupted_artifact_is_detected_and_rebuilt(tmp_path: Path, tiny_manifest: dict, cache_dir: Path) -> None:
    path = write_manifest(tmp_path / "m.yaml", **tiny_manifest)
    first, _ = build(path, cache_dir)
    model = first["simplify@20ms"].path / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    graph = plan(load_manifest(path))
    statuses = {s.node_id: s for s in dag.explain(graph, Cache(cache_dir), "tiny")}
    assert statuses["simplify@20ms"].reasons[0].startswith("cached artifact corrupt: model.onnx")
    second, hits = build(path, cache_dir)
    assert hits["simplify@20ms"] is False and hits["onnx@20ms"] is True
    assert second["simplify@20ms"].digest == first["simplify@20ms"].digest
    listing = json.loads((second["simplify@20ms"].path / "artifact.json").read_text())
    assert Cache(cache_dir).lookup("simplify", second["simplify@20ms"].key)[1] == "hit"
    assert "model.onnx" in listing["files"]


def test_key_covers_config_inputs_tools_and_version() -> None:
    from pipeline.export.to_onnx import OnnxConfig

    node = dag.Node("onnx@20ms", OnnxStage, OnnxConfig())
    base = dag.key_of(dag.key_document(node, {"model": "a" * 64}))
    assert dag.key_of(dag.key_document(node, {"model": "b" * 64})) != base
    other = dag.Node("onnx@20ms", OnnxStage, OnnxConfig(opset=OnnxConfig().opset + 1))
    assert dag.key_of(dag.key_document(other, {"model": "a" * 64})) != base
    assert len(base) == 64


def test_graph_rejects_unknown_inputs_and_cycles() -> None:
    from pipeline.errors import InternalError
    from pipeline.export.to_onnx import OnnxConfig

    with pytest.raises(InternalError, match="did you mean 'onnx@20ms'"):
        dag.Graph([dag.Node("onnx@20ms", OnnxStage, OnnxConfig()), dag.Node("b", OnnxStage, OnnxConfig(), (("model", "onnx@20m"),))])
    with pytest.raises(InternalError, match="cycle"):
        dag.Graph([dag.Node("a", OnnxStage, OnnxConfig(), (("m", "b"),)), dag.Node("b", OnnxStage, OnnxConfig(), (("m", "a"),))])


def test_every_stage_misses_on_its_own_version_tool_and_config(
    tmp_path: Path, tiny_manifest: dict, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For each stage of a plan: bumping its version, one of its tools, or its config misses that node."""
    path = write_manifest(tmp_path / "m.yaml", **tiny_manifest)
    build(path, cache_dir)
    graph = plan(load_manifest(path))
    cache = Cache(cache_dir)
    assert all(s.hit for s in dag.explain(graph, cache, "tiny"))
    real = dag.tool_version
    for node in graph.nodes.values():
        stage = node.stage
        with monkeypatch.context() as patch:
            patch.setattr(stage, "version", stage.version + "-next")
            status = {s.node_id: s for s in dag.explain(graph, cache, "tiny")}[node.id]
            assert not status.hit and any(r.startswith("stage version") for r in status.reasons), node.id
        tool = stage.tools[0]
        with monkeypatch.context() as patch:
            patch.setattr(dag, "tool_version", lambda name: "0.0-other" if name == tool else real(name))
            status = {s.node_id: s for s in dag.explain(graph, cache, "tiny")}[node.id]
            assert not status.hit and any(r.startswith(f"tool version {tool}") for r in status.reasons), node.id
        field = next(iter(type(node.config).model_fields))
        changed = dict(graph.nodes)
        value = getattr(node.config, field)
        changed[node.id] = dag.Node(node.id, stage, node.config.model_copy(update={field: _perturb(value)}), node.inputs)
        status = {s.node_id: s for s in dag.explain(dag.Graph(list(changed.values())), cache, "tiny")}[node.id]
        assert not status.hit and any(r.startswith(f"config {field}") for r in status.reasons), (node.id, status.reasons)


def _perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, BaseModel):
        first = next(iter(type(value).model_fields))
        return value.model_copy(update={first: _perturb(getattr(value, first))})
    raise TypeError(type(value))


# --- the store itself: damage of every kind is a miss with a reason, never a crash ---------------


class _WriteConfig(dag.StageConfig):
    text: str = "hello"


class _WriteStage(dag.Stage):
    """A stage small enough to build in every malformation case: one file and a wall-clock record."""

    name = "write"
    version = "1"
    tools = ()
    Config = _WriteConfig

    @classmethod
    def run(cls, config: _WriteConfig, inputs: dict, out: Path, ctx: dag.StageContext) -> None:
        (out / "payload.txt").write_text(config.text)
        (out / "sub").mkdir()
        (out / "sub" / "nested.bin").write_bytes(b"\x00\x01")


def _publish(cache: Cache, key: str, files: dict[str, bytes]) -> Artifact:
    with cache.lock("write", key), cache.staging("write", key) as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        return cache.publish(tmp, "write", key, {"stage": "write", "key": key}, {"node": "n"})


def _rewrite_listing(path: Path, change) -> None:
    listing = json.loads((path / "artifact.json").read_text())
    change(listing)
    (path / "artifact.json").write_text(json.dumps(listing))


def _files_with_a_number(a: Path) -> None:
    _rewrite_listing(a, lambda l: l["files"].__setitem__("payload.txt", 7))


def _digest_of_other_files(a: Path) -> None:
    def change(listing: dict) -> None:
        listing["digest"] = "0" * 64

    _rewrite_listing(a, change)


def _listing_claims_a_missing_file(a: Path) -> None:
    from pipeline.cache import canonical_json, sha256_text

    def change(listing: dict) -> None:
        listing["files"]["gone.bin"] = "1" * 64
        listing["digest"] = sha256_text(canonical_json(listing["files"]))  # self-consistent, but not what is on disk

    _rewrite_listing(a, change)


MALFORMED = {
    "listing not JSON": (lambda a: (a / "artifact.json").write_text("{not json"), "artifact.json is not JSON"),
    "listing not UTF-8": (lambda a: (a / "artifact.json").write_bytes(b'{"digest": "\xff\xfe"}'), "artifact.json is not UTF-8"),
    "listing a list": (lambda a: (a / "artifact.json").write_text("[1, 2]"), "artifact.json holds a list"),
    "listing lacks digest": (lambda a: _rewrite_listing(a, lambda l: l.pop("digest")), "lacks 'digest'"),
    "listing lacks files": (lambda a: _rewrite_listing(a, lambda l: l.pop("files")), "lacks 'files'"),
    "files a list": (lambda a: _rewrite_listing(a, lambda l: l.__setitem__("files", ["payload.txt"])), "files is not an object"),
    "files with a number": (_files_with_a_number, "files is not an object"),
    "digest a number": (lambda a: _rewrite_listing(a, lambda l: l.__setitem__("digest", 12)), "digest is a int"),
    "digest of other files": (_digest_of_other_files, "digest does not match its own file list"),
    "listing claims a missing file": (_listing_claims_a_missing_file, "gone.bin no longer match"),
    "extra file on disk": (lambda a: (a / "stray.txt").write_text("x"), "stray.txt no longer match"),
    "nested file changed": (lambda a: (a / "sub" / "nested.bin").write_bytes(b"\x02"), "sub/nested.bin no longer match"),
    "key.json missing": (lambda a: (a / "key.json").unlink(), "key.json is missing"),
    "key.json not JSON": (lambda a: (a / "key.json").write_text("{"), "key.json is not JSON"),
    "key.json a string": (lambda a: (a / "key.json").write_text('"k"'), "key.json holds a str"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_entry_is_corrupt_and_rebuilt(case: str, cache_dir: Path) -> None:
    damage, reason = MALFORMED[case]
    graph = dag.Graph([dag.Node("write", _WriteStage, _WriteConfig())])
    cache = Cache(cache_dir)
    first = executor.execute(graph, cache, "t")["write"]
    damage(first.path)
    artifact, why = cache.lookup("write", first.key)
    assert artifact is None and why.startswith("corrupt: ") and reason in why, why
    assert not dag.explain(graph, cache, "t")[0].hit
    hits: dict[str, bool] = {}
    events = executor.BuildEvents(finished=lambda node_id, hit, seconds, note: hits.__setitem__(node_id, hit))
    second = executor.execute(graph, cache, "t", events)["write"]
    assert hits == {"write": False}
    assert second.digest == first.digest and (second.path / "payload.txt").read_text() == "hello"
    assert cache.lookup("write", first.key)[1] == "hit"


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'"a string"'])
def test_malformed_index_is_no_history_not_a_crash(content: bytes, cache_dir: Path) -> None:
    graph = dag.Graph([dag.Node("write", _WriteStage, _WriteConfig())])
    cache = Cache(cache_dir)
    executor.execute(graph, cache, "t")
    cache._index_path("t", "write").write_bytes(content)
    assert cache.previous("t", "write") is None
    assert dag.explain(graph, cache, "t")[0].hit
    changed = dag.Graph([dag.Node("write", _WriteStage, _WriteConfig(text="other"))])
    assert dag.explain(changed, cache, "t")[0].reasons == ("never built for this target",)


def test_timings_are_recorded_and_checked_but_not_digested(cache_dir: Path) -> None:
    cache = Cache(cache_dir)
    fast = _publish(cache, "a" * 64, {"model.bin": b"weights", "timings.json": b'{"seconds": 1.0}'})
    slow = _publish(cache, "b" * 64, {"model.bin": b"weights", "timings.json": b'{"seconds": 9.5}'})
    assert fast.digest == slow.digest
    other = _publish(cache, "c" * 64, {"model.bin": b"other weights", "timings.json": b'{"seconds": 1.0}'})
    assert other.digest != fast.digest
    listing = json.loads((fast.path / "artifact.json").read_text())
    assert "timings.json" not in listing["files"] and set(listing["volatile"]) == {"timings.json"}
    assert cache.lookup("write", fast.key)[1] == "hit"
    (fast.path / "timings.json").write_text('{"seconds": 0.1}')
    assert cache.lookup("write", fast.key)[1] == "corrupt: timings.json no longer match the recorded digest"
    (slow.path / "timings.json").unlink()
    assert cache.lookup("write", slow.key)[1].startswith("corrupt: timings.json")


def test_marker_written_with_the_first_write_and_clean_needs_it(tmp_path: Path) -> None:
    from pipeline.cache import CACHE_MARKER
    from pipeline.errors import UserError

    cache = Cache(tmp_path / "cache")
    assert cache.lookup("write", "a" * 64) == (None, "absent")
    assert not cache.root.exists()  # reading creates nothing
    _publish(cache, "a" * 64, {"model.bin": b"w"})
    assert (cache.root / CACHE_MARKER).is_file()
    assert cache.clean() > 0 and not cache.root.exists()
    assert cache.clean() == 0

    stranger = tmp_path / "home"
    (stranger / "objects").mkdir(parents=True)
    (stranger / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match=f"{stranger}: not a speechport cache") as caught:
        Cache(stranger).clean()
    assert caught.value.hint and (stranger / "thesis.tex").read_text() == "years of work"
