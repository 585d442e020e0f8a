"""The CLI's contract: one exit code per outcome, outputs it may replace, logs a person can read."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline import cli
from pipeline.cache import Artifact
from pipeline.cli import BUG_LINE, OUTPUT_MARKER, main
from pipeline.errors import InternalError, ToolchainError, UserError
from pipeline.report.summary import print_summary
from tests.conftest import write_manifest

# --- exit codes, with the executor replaced: what cmd_build does with each kind of failure --------


class FakeBuild(dict):
    """What executor.execute returns: artifacts by node id, plus the failures."""

    def __init__(self, artifacts: dict[str, Artifact], failures: dict) -> None:
        super().__init__(artifacts)
        self.failures = failures


def _failure(node_id: str, kind: str, message: str, cause: str | None = None):
    from pipeline.dag import StageFailure

    codes = {"user": 2, "toolchain": 4, "internal": 3}
    trace = f"Traceback (most recent call last):\n  stage {node_id}\n{message}" if kind == "internal" else None
    return StageFailure(node_id, node_id.split("@")[0], kind, message, codes.get(kind, 4), cause, trace)


def _report_artifact(tmp_path: Path, passed: bool) -> Artifact:
    path = tmp_path / "report-artifact"
    path.mkdir(exist_ok=True)
    variant = {"name": "onnxruntime-fp32@20ms", "passed": passed, "failures": [] if passed else ["logits max abs 1 > 1e-05"]}
    (path / "report.json").write_text(json.dumps({"target": "tiny", "passed": passed, "variants": [variant]}))
    (path / "report.md").write_text("# report\n")
    (path / "artifact.json").write_text("{}")  # bookkeeping: must not be exported
    return Artifact("report", "k" * 64, path, "d" * 64)


@pytest.fixture
def fake_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Make `speechport build` run a fake executor returning (artifacts, failures); returns the call log."""
    from pipeline import execute as executor

    calls: list[dict] = []
    graph = SimpleNamespace(nodes={"report": SimpleNamespace(inputs=())})
    monkeypatch.setattr(cli, "_load", lambda path: (SimpleNamespace(name="tiny"), graph, SimpleNamespace()))

    def arrange(passed: bool = True, failures: dict | None = None, report: bool = True) -> list[dict]:
        artifacts = {"report": _report_artifact(tmp_path, passed)} if report else {}

        def execute(graph, cache, target, events=None, jobs=1):
            calls.append({"target": target, "jobs": jobs})
            return FakeBuild(artifacts, failures or {})

        monkeypatch.setattr(executor, "execute", execute)
        return calls

    return arrange


def _build(tmp_path: Path, *extra: str) -> int:
    return main(["build", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "out"), *extra])


def test_exit_0_when_everything_passed(tmp_path: Path, fake_build, capsys: pytest.CaptureFixture) -> None:
    fake_build(passed=True)
    assert _build(tmp_path) == 0
    out = tmp_path / "out"
    assert (out / OUTPUT_MARKER).is_file() and (out / "report.json").is_file()
    assert not (out / "artifact.json").exists()
    assert "onnxruntime-fp32@20ms" in capsys.readouterr().err


def test_exit_1_when_a_variant_failed_verification(tmp_path: Path, fake_build, capsys: pytest.CaptureFixture) -> None:
    fake_build(passed=False)
    assert _build(tmp_path) == 1
    err = capsys.readouterr().err
    assert "verification failed" in err and "FAILED verification" in err
    assert (tmp_path / "out" / "report.json").is_file()


@pytest.mark.parametrize(
    "kinds, expected",
    [
        (("toolchain", "user", "internal"), 3),
        (("toolchain", "user"), 2),
        (("toolchain",), 4),
        (("internal",), 3),
    ],
)
def test_failures_decide_the_exit_code_bug_then_input_then_tool(
    kinds: tuple[str, ...], expected: int, tmp_path: Path, fake_build, capsys: pytest.CaptureFixture
) -> None:
    messages = {
        "user": "model.checkpoint: tiny.safetensors does not fit",
        "toolchain": "litert-int8@20ms (stage tflite): tensorflow 2.21.0 failed: no kernel [op SQRT]",
        "internal": "KeyError: 'logits'",
    }
    failures = {f"{kind}@20ms": _failure(f"{kind}@20ms", kind, messages[kind]) for kind in kinds}
    failures["verify@20ms"] = _failure("verify@20ms", "skipped", messages[kinds[0]], cause=f"{kinds[0]}@20ms")
    fake_build(passed=False, failures=failures)
    assert _build(tmp_path) == expected
    err = capsys.readouterr().err
    for kind in kinds:
        assert messages[kind] in err, err
    assert f"skipped 1 stage(s) that need {kinds[0]}@20ms: verify@20ms" in err
    assert (BUG_LINE in err) == (expected == 3)
    assert ("Traceback" in err) == ("internal" in kinds)
    if "user" in kinds:
        assert f"{tmp_path / 'm.yaml'}: model.checkpoint" in err  # bad input names the manifest
        assert not (tmp_path / "out").exists()  # nothing shipped from a build of wrong input
    else:
        assert (tmp_path / "out" / "report.json").is_file()  # the report still lists every variant


def test_report_that_failed_is_not_exported_and_its_failure_decides(
    tmp_path: Path, fake_build, capsys: pytest.CaptureFixture
) -> None:
    failures = {
        "tflite@20ms": _failure("tflite@20ms", "toolchain", "tensorflow 2.21.0 failed: boom"),
        "report": _failure("report", "skipped", "tensorflow 2.21.0 failed: boom", cause="tflite@20ms"),
    }
    fake_build(failures=failures, report=False)
    assert _build(tmp_path) == 4
    assert "tensorflow 2.21.0 failed: boom" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("error", [KeyError("logits"), ValueError("bad shape"), ZeroDivisionError("division by zero"), InternalError("plan broke")])
def test_exit_3_for_any_unexpected_exception_with_traceback_and_bug_line(
    error: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def explode(path: str):
        raise error

    monkeypatch.setattr(cli, "_load", explode)
    assert _build(tmp_path) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and type(error).__name__ in err
    assert err.rstrip().splitlines()[-1] == BUG_LINE


def test_exit_4_for_a_toolchain_error_escaping_a_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def explode(path: str):
        raise ToolchainError("no kernel", tool="pytest", stage="tflite-int8@20ms", variant="litert-int8@20ms", op="SQRT")

    monkeypatch.setattr(cli, "_load", explode)
    assert _build(tmp_path) == 4
    err = capsys.readouterr().err
    assert f"litert-int8@20ms (stage tflite-int8@20ms): pytest {pytest.__version__} failed: no kernel [op SQRT]" in err
    assert "Traceback" not in err


def test_exit_130_on_ctrl_c_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def interrupt(path: str):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load", interrupt)
    assert _build(tmp_path) == 130
    assert capsys.readouterr().err == "speechport: interrupted\n"


def test_jobs_reaches_an_executor_that_takes_it(tmp_path: Path, fake_build) -> None:
    import os

    calls = fake_build()
    assert _build(tmp_path, "--jobs", "3") == 0
    assert _build(tmp_path) == 0
    assert [c["jobs"] for c in calls] == [3, os.cpu_count() or 1]


def test_jobs_is_not_passed_to_an_executor_without_it(tmp_path: Path, fake_build, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import execute as executor

    fake_build()
    report = _report_artifact(tmp_path, True)
    monkeypatch.setattr(executor, "execute", lambda graph, cache, target, events=None: {"report": report})
    assert _build(tmp_path, "--jobs", "2") == 0


@pytest.mark.parametrize("jobs", ["0", "-1", "two"])
def test_jobs_below_one_is_refused(jobs: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        _build(tmp_path, "--jobs", jobs)
    assert exited.value.code == 2
    assert "--jobs" in capsys.readouterr().err


# --- outputs and cache speechport did not create are never deleted ----------------------------------


def test_out_dir_not_written_by_speechport_is_refused(tmp_path: Path, fake_build, capsys: pytest.CaptureFixture) -> None:
    calls = fake_build()
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _build(tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{out}: is not empty and was not written by speechport" in err and "hint: pass --out" in err
    assert (out / "notes.txt").read_text() == "mine" and calls == []  # refused before building anything


def test_out_that_is_a_file_is_refused(tmp_path: Path, fake_build, capsys: pytest.CaptureFixture) -> None:
    fake_build()
    (tmp_path / "out").write_text("a file")
    assert _build(tmp_path) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "a file"


def test_out_dir_that_is_empty_or_speechports_own_is_replaced(tmp_path: Path, fake_build) -> None:
    fake_build()
    out = tmp_path / "out"
    out.mkdir()
    assert _build(tmp_path) == 0
    (out / "stale-variant").mkdir()
    assert _build(tmp_path) == 0  # the marker the first build left makes it ours to replace
    assert not (out / "stale-variant").exists() and (out / OUTPUT_MARKER).is_file()


def test_clean_refuses_a_directory_that_is_not_a_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    stranger = tmp_path / "home"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("SPEECHPORT_CACHE", str(stranger))
    assert main(["clean"]) == 2
    assert f"{stranger}: not a speechport cache" in capsys.readouterr().err
    assert (stranger / "thesis.tex").is_file()


def test_clean_removes_a_cache_and_tolerates_none(cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from pipeline.cache import Cache

    with Cache(cache_dir).lock("stage", "a" * 64):
        pass
    assert main(["clean"]) == 0 and not cache_dir.exists()
    assert main(["clean"]) == 0
    assert "nothing to remove" in capsys.readouterr().out


# --- errors cross process boundaries intact --------------------------------------------------------


def test_toolchain_error_names_everything_and_survives_pickling() -> None:
    error = ToolchainError("no kernel", tool="pytest", stage="tflite-int16x8@20ms", variant="litert-int16x8@20ms", op="SQRT")
    assert str(error) == f"litert-int16x8@20ms (stage tflite-int16x8@20ms): pytest {pytest.__version__} failed: no kernel [op SQRT]"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ToolchainError and str(copy) == str(error) and copy.exit_code == 4
    assert (copy.message, copy.tool, copy.stage, copy.variant, copy.op, copy.tool_version) == (
        "no kernel", "pytest", "tflite-int16x8@20ms", "litert-int16x8@20ms", "SQRT", pytest.__version__,
    )
    bare = ToolchainError("crashed", tool="no-such-distribution-xyz")
    assert str(bare) == "no-such-distribution-xyz version unknown failed: crashed"
    assert str(pickle.loads(pickle.dumps(bare))) == str(bare)


def test_user_error_survives_pickling_with_where_and_hint() -> None:
    error = UserError("checkpoint file not found", where="m.yaml: model.checkpoint", hint="check the path")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is UserError and str(copy) == str(error)
    assert (copy.where, copy.hint, copy.message) == ("m.yaml: model.checkpoint", "check the path", "checkpoint file not found")


# --- the summary: whole names in a CI log, a table that never cuts the name on a terminal ----------


REPORT = {
    "target": "android",
    "passed": False,
    "variants": [
        {
            "name": "onnxruntime-fp32@20ms", "status": "passed", "passed": True, "failures": [], "size_bytes": 1_234_567,
            "outputs": {"logits": {"max_abs": 1.5e-06, "cosine": 0.99999994}, "h_out": {"max_abs": 3e-06, "cosine": 0.9999}},
            "cer": 0.125, "cer_vs_reference": 0.0, "decision_agreement": 1.0, "rtf": 0.0123,
            "noisy": {"passed": True, "status": "passed", "failures": [], "cer": 0.25, "outputs": {"logits": {"sqnr_db": 80.0}}},
        },
        {
            "name": "litert-int16x8-dsp-island-float@20ms", "status": "failed", "passed": False,
            "failures": ["logits: max abs 0.31 > 0.1 [op SQRT]", "noisy copy: logits: SQNR 9.0 dB < 20 dB"],
            "outputs": {"logits": {"max_abs": 0.31}},
            "noisy": {"passed": False, "status": "failed", "failures": ["logits: SQNR 9.0 dB < 20 dB"], "outputs": {"logits": {"sqnr_db": 9.0}}},
        },
        {
            "name": "litert-int8@40ms", "status": "error", "passed": False, "failures": [],
            "error": {"node": "tflite-int8@40ms", "stage": "tflite", "kind": "toolchain", "message": "tensorflow failed: boom [op SQRT]"},
        },
    ],
}


def _summary(terminal: bool, width: int) -> str:
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=width, color_system="truecolor" if terminal else None)
    print_summary(console, REPORT)
    return buffer.getvalue()


def test_summary_in_a_log_is_a_plain_markdown_table() -> None:
    text = _summary(terminal=False, width=40)  # narrower than any row: nothing may wrap or be cut
    lines = text.splitlines()
    assert "\x1b[" not in text and "…" not in text
    header = lines.index("| variant | status | MB | max abs | cosine | CER | CER vs ref | decisions | noisy copy | RTF |")
    assert lines[header + 1] == "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    assert lines[header + 2] == "| onnxruntime-fp32@20ms | passed | 1.23 | 3e-06 | 0.999900 | 0.1250 | 0.0000 | 1.0000 | passed, CER 0.2500 | 0.0123 |"
    assert lines[header + 3] == "| litert-int16x8-dsp-island-float@20ms | FAILED verification | - | 0.31 | - | - | - | - | FAILED, SQNR 9.0 | - |"
    assert lines[header + 4] == "| litert-int8@40ms | FAILED at tflite | - | - | - | - | - | - | - | - |"
    assert "FAIL litert-int16x8-dsp-island-float@20ms: logits: max abs 0.31 > 0.1 [op SQRT]" in lines
    assert "FAIL litert-int16x8-dsp-island-float@20ms: noisy copy: logits: SQNR 9.0 dB < 20 dB" in lines
    assert "FAIL litert-int8@40ms: toolchain error in tflite-int8@40ms: tensorflow failed: boom [op SQRT]" in lines


@pytest.mark.parametrize("width", [60, 100])
def test_summary_on_a_terminal_keeps_every_variant_name_whole(width: int) -> None:
    import re

    text = _summary(terminal=True, width=width)
    assert "\x1b[" in text  # styled: this is the rich table, not the log format
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    table = plain.split("\nFAIL ")[0]  # the failure lines below the table (a status cell may wrap to "FAIL")
    for variant in REPORT["variants"]:
        assert variant["name"] in table, table  # on one line, whatever the other columns had to give up
    assert "…" not in table
    assert "[op SQRT]" in plain  # failure text printed as text, not eaten as markup
    assert "| variant |" not in plain


# --- the real thing: a tiny model built end to end ------------------------------------------------


def test_real_build_exits_0_then_1_when_a_tolerance_cannot_be_met(
    tmp_path: Path, tiny_manifest: dict, cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_manifest(tmp_path / "m.yaml", **tiny_manifest)
    out = tmp_path / "out"
    assert main(["build", str(path), "--out", str(out), "--jobs", "1"]) == 0, capsys.readouterr().err
    assert (out / OUTPUT_MARKER).is_file() and json.loads((out / "report.json").read_text())["passed"]
    strict = write_manifest(tmp_path / "m.yaml", **tiny_manifest, tolerances={"fp32": {"max_abs": 1e-30}})
    assert main(["build", str(strict), "--out", str(out), "--jobs", "1"]) == 1
    assert "verification failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error, code",
    [
        (KeyError("logits"), 3),
        (ToolchainError("no kernel", tool="torch", op="SQRT"), 4),
        (UserError("not what the stage expected", where="model.kwargs"), 2),
    ],
)
def test_real_build_with_a_failing_stage_exits_by_its_kind(
    error: Exception, code: int, tmp_path: Path, tiny_manifest: dict, cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
) -> None:
    real_load = cli._load

    def load_with_a_broken_first_stage(manifest_path: str):
        manifest, graph, cache = real_load(manifest_path)
        first = graph.nodes[graph.order[0]].stage

        def run(cls, config, inputs, out, ctx):
            raise error

        monkeypatch.setattr(first, "run", classmethod(run))
        return manifest, graph, cache

    monkeypatch.setattr(cli, "_load", load_with_a_broken_first_stage)
    path = write_manifest(tmp_path / "m.yaml", **tiny_manifest)
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--jobs", "1"]) == code
    err = capsys.readouterr().err
    assert ("Traceback" in err) == (code == 3) and (BUG_LINE in err) == (code == 3)
    if code == 2:
        assert f"{path}: model.kwargs: not what the stage expected" in err
        assert not (tmp_path / "out").exists()
    if code == 4:
        assert "torch" in err and "failed: no kernel [op SQRT]" in err
