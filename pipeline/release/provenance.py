"""provenance.json: how a bundle was made, with nothing that changes from one build of the same tree to the next.

The manifest (text and digest), every stage's cache key and artifact digest with its stage
version, the tool versions those keys were made of, the git commit and whether the tree was
dirty (and which paths). No timestamps, no machine paths, no durations.
"""

from __future__ import annotations

import json
import platform as host
import subprocess
from pathlib import Path
from typing import Any, Mapping

from pipeline.cache import KEY_FILE, Artifact, sha256_file


def git_state(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "note": "not a git checkout (or git is missing)"}
    status = git("status", "--porcelain") or ""
    changed = sorted(line[3:] for line in status.splitlines() if line.strip())
    return {"commit": commit.strip(), "dirty": bool(changed), "changed": changed}


def provenance(
    *, version: str, platform: str, manifest_path: Path, repo: Path, graph: Any, built: Mapping[str, Artifact]
) -> dict[str, Any]:
    import pipeline
    from pipeline.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    stages, tools = [], {}
    for node_id in graph.nodes:
        artifact = built[node_id]
        key_document = json.loads((artifact.path / KEY_FILE).read_text())
        tools |= key_document.get("tools", {})
        stages.append(
            {
                "node": node_id,
                "stage": key_document["stage"],
                "stage_version": key_document["version"],
                "key": artifact.key,
                "artifact_digest": artifact.digest,
            }
        )
    try:
        manifest_name = manifest_path.resolve().relative_to(repo).as_posix()
    except ValueError:
        manifest_name = manifest_path.name
    return {
        "release": version,
        "platform": platform,
        "target": manifest.name,
        "speechport": pipeline.__version__,
        "manifest": {"file": manifest_name, "sha256": sha256_file(manifest_path), "text": manifest_path.read_text()},
        "model": {"factory": manifest.model.factory, "kwargs": manifest.model.kwargs, "checkpoint_sha256": sha256_file(manifest.model.checkpoint)},
        "git": git_state(repo),
        "tools": dict(sorted(tools.items())) | {"python": host.python_version()},
        "stages": stages,
    }
