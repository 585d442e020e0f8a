"""Content-addressed artifact store.

An artifact is a directory published at `objects/<stage>/<key>/` where `key` is the SHA-256 of
the canonical JSON of everything that determines its bytes (`key.json`, kept beside it). Its
files are listed with their SHA-256 in `artifact.json`, written last; a directory whose files no
longer match that list is corrupt and gets rebuilt, never trusted. A stage writes into a private
temporary directory and publishes it with one `rename`, under a per-key `flock`, so a killed
build leaves only a temporary directory that nothing reads, and two builds sharing the cache
build each key once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_FILE = "key.json"
LISTING_FILE = "artifact.json"
RUN_FILE = "run.json"
_BOOKKEEPING = {KEY_FILE, LISTING_FILE, RUN_FILE}


def canonical_json(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_files(paths: list[Path], root: Path) -> str:
    """One digest over named file contents: relative path and content both count."""
    listing = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(paths)}
    return sha256_text(canonical_json(listing))


def _listing(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.relative_to(directory).as_posix() not in _BOOKKEEPING
    }


@dataclass(frozen=True)
class Artifact:
    """A published, verified artifact directory."""

    stage: str
    key: str
    path: Path
    digest: str


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _final(self, stage: str, key: str) -> Path:
        return self.root / "objects" / stage / key

    def lookup(self, stage: str, key: str) -> tuple[Artifact | None, str]:
        """The artifact for `key` if present and intact, else None and why not ('absent'/'corrupt: ...')."""
        final = self._final(stage, key)
        listing_path = final / LISTING_FILE
        if not listing_path.is_file():
            return None, "absent"
        try:
            recorded = json.loads(listing_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            return None, f"corrupt: unreadable {LISTING_FILE} ({exc})"
        actual = _listing(final)
        if actual != recorded["files"]:
            changed = sorted(set(actual.items()) ^ set(recorded["files"].items()))
            names = sorted({name for name, _ in changed})
            return None, f"corrupt: {', '.join(names[:5])} no longer match the recorded digest"
        return Artifact(stage, key, final, recorded["digest"]), "hit"

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        lock_path = self.root / "locks" / stage / f"{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def staging(self, stage: str, key: str) -> Iterator[Path]:
        """A fresh private directory to build `key` in; removed unless published. Caller holds the lock."""
        parent = self.root / "objects" / stage
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f".tmp-{key}-*"):
            # we hold the key's lock, so any other temporary for it belongs to a dead build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f".tmp-{key}-{os.getpid()}"
        tmp.mkdir()
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, tmp: Path, stage: str, key: str, key_document: dict, run_record: dict) -> Artifact:
        """Seal `tmp` (listing written last) and move it into place atomically. Caller holds the lock."""
        files = _listing(tmp)
        digest = sha256_text(canonical_json(files))
        (tmp / KEY_FILE).write_text(json.dumps(key_document, indent=2, sort_keys=True) + "\n")
        (tmp / RUN_FILE).write_text(json.dumps(run_record, indent=2, sort_keys=True) + "\n")
        (tmp / LISTING_FILE).write_text(json.dumps({"digest": digest, "files": files}, indent=2) + "\n")
        final = self._final(stage, key)
        if final.exists():
            # a corrupt predecessor: move it aside first so the rename below is still atomic
            graveyard = final.parent / f".corrupt-{key}-{os.getpid()}-{time.time_ns()}"
            final.rename(graveyard)
            shutil.rmtree(graveyard, ignore_errors=True)
        tmp.rename(final)
        return Artifact(stage, key, final, digest)

    # explain support: the last key document built for a target's node
    def _index_path(self, target: str, node_id: str) -> Path:
        return self.root / "index" / target / f"{node_id.replace('/', '_')}.json"

    def remember(self, target: str, node_id: str, key_document: dict) -> None:
        path = self._index_path(target, node_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(key_document, indent=2, sort_keys=True))
        tmp.replace(path)

    def previous(self, target: str, node_id: str) -> dict | None:
        path = self._index_path(target, node_id)
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def clean(self) -> int:
        """Remove the whole store; returns bytes freed."""
        if not self.root.exists():
            return 0
        size = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        shutil.rmtree(self.root)
        return size
