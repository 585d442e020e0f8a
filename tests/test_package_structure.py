"""The package's shape: no import cycles, no stage module used as a library by another, no work at import time."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "pipeline"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> tuple[dict[str, set[str]], set[str]]:
    """Module -> pipeline modules it imports (anywhere in it, lazy imports too), and the modules defining a Stage."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    stage_modules = set()
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.ClassDef) and any(isinstance(b, ast.Name) and b.id == "Stage" for b in node.bases):
                stage_modules.add(name)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph, stage_modules


def test_no_import_cycle_in_the_package() -> None:
    graph, _ = _imports()
    # a package's __init__ importing its own submodule is not a cycle of ideas; every other edge counts
    edges = {m: {d for d in deps if not (m + ".").startswith(d + ".") } for m, deps in graph.items()}
    sorter = graphlib.TopologicalSorter(edges)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_no_stage_module_is_imported_by_another_stage_module() -> None:
    graph, stage_modules = _imports()
    assert {"pipeline.export.trace", "pipeline.verify.stage", "pipeline.backends.litert.tflite"} <= stage_modules
    offenders = sorted((m, d) for m in stage_modules for d in graph[m] if d in stage_modules)
    assert not offenders, f"stage modules used as libraries by other stages: {offenders}"


def test_help_answers_without_loading_a_toolchain() -> None:
    code = (
        "import sys; from pipeline.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'onnxruntime', 'onnx', 'onnx2tf', 'ai_edge_litert') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from pipeline.manifest import load_manifest; load_manifest('targets/android.yaml')\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'onnxruntime', 'onnx2tf', 'ai_edge_litert') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
