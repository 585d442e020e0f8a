"""Content-addressed artifact store.

An artifact is a directory published at `objects/<stage>/<key>/` where `key` is the SHA-256 of
the canonical JSON of everything that determines its bytes (`key.json`, kept beside it). Its
files are listed with their SHA-256 in `artifact.json`, written last; a directory whose files no
longer match that list is corrupt and gets rebuilt, never trusted. A stage writes into a private
temporary directory and publishes it with one `rename`, under a per-key `flock`, so a killed
build leaves only a temporary directory that nothing reads, and two builds sharing the cache
build each key once.

Wall-clock figures (`timings.json`) are volatile: recorded and checked, but left out of the digest
that downstream keys are made of, so a slower machine does not rebuild everything after it.
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

from pipeline.errors import UserError

KEY_FILE = "key.json"
LISTING_FILE = "artifact.json"
RUN_FILE = "run.json"
_BOOKKEEPING = {KEY_FILE, LISTING_FILE, RUN_FILE}
VOLATILE_FILES = frozenset({"timings.json"})  # relative paths a stage may write that differ run to run
CACHE_MARKER = ".speechport-cache"  # `clean` deletes only a directory holding this


def artifact_bytes(path: Path) -> int:
    """Size of an artifact as shipped: a file, or every file of a package directory (e.g. an .mlpackage)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


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


def _string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _read_json(path: Path) -> tuple[Any, str | None]:
    """The parsed document, or None and what is wrong with it (for a 'corrupt: ...' reason)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8")), None
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except OSError as exc:
        return None, f"{path.name} is unreadable ({exc.strerror or exc})"
    except UnicodeDecodeError as exc:
        return None, f"{path.name} is not UTF-8 ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        return None, f"{path.name} is not JSON ({exc.msg} at line {exc.lineno})"


def _check_listing(recorded: Any) -> str | None:
    """What is malformed in an artifact.json document, or None if its shape is right."""
    if not isinstance(recorded, dict):
        return f"{LISTING_FILE} holds a {type(recorded).__name__}, expected an object"
    missing = [name for name in ("digest", "files") if name not in recorded]
    if missing:
        return f"{LISTING_FILE} lacks {', '.join(repr(m) for m in missing)}"
    if not isinstance(recorded["digest"], str):
        return f"{LISTING_FILE} digest is a {type(recorded['digest']).__name__}, expected a string"
    for field in ("files", "volatile"):
        if field in recorded and not _string_map(recorded[field]):
            return f"{LISTING_FILE} {field} is not an object of file name -> sha256"
    if recorded["digest"] != sha256_text(canonical_json(recorded["files"])):
        return f"{LISTING_FILE} digest does not match its own file list"
    return None


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

    def _ensure_root(self) -> None:
        """Create the root with its marker, so `clean` can tell this store from any other directory."""
        marker = self.root / CACHE_MARKER
        if not marker.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            marker.write_text("speechport artifact cache: `speechport clean` may delete this directory\n")

    def _final(self, stage: str, key: str) -> Path:
        return self.root / "objects" / stage / key

    def lookup(self, stage: str, key: str) -> tuple[Artifact | None, str]:
        """The artifact for `key` if present and intact, else None and why not ('absent'/'corrupt: ...')."""
        final = self._final(stage, key)
        listing_path = final / LISTING_FILE
        if not listing_path.is_file():
            return None, "absent"
        recorded, problem = _read_json(listing_path)
        problem = problem or _check_listing(recorded)
        if problem is None:
            key_document, problem = _read_json(final / KEY_FILE)
            if problem is None and not isinstance(key_document, dict):
                problem = f"{KEY_FILE} holds a {type(key_document).__name__}, expected an object"
        if problem is not None:
            return None, f"corrupt: {problem}"
        try:
            actual = _listing(final)
        except OSError as exc:
            return None, f"corrupt: cannot read {exc.filename} ({exc.strerror or exc})"
        expected = {**recorded["files"], **recorded.get("volatile", {})}
        if actual != expected:
            changed = sorted(set(actual.items()) ^ set(expected.items()))
            names = sorted({name for name, _ in changed})
            return None, f"corrupt: {', '.join(names[:5])} no longer match the recorded digest"
        return Artifact(stage, key, final, recorded["digest"]), "hit"

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        self._ensure_root()
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
        self._ensure_root()
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
        self._ensure_root()
        everything = _listing(tmp)
        files = {name: sha for name, sha in everything.items() if name not in VOLATILE_FILES}
        volatile = {name: sha for name, sha in everything.items() if name in VOLATILE_FILES}
        digest = sha256_text(canonical_json(files))
        listing: dict[str, Any] = {"digest": digest, "files": files}
        if volatile:
            listing["volatile"] = volatile
        (tmp / KEY_FILE).write_text(json.dumps(key_document, indent=2, sort_keys=True) + "\n")
        (tmp / RUN_FILE).write_text(json.dumps(run_record, indent=2, sort_keys=True) + "\n")
        (tmp / LISTING_FILE).write_text(json.dumps(listing, indent=2) + "\n")
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
        self._ensure_root()
        path = self._index_path(target, node_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(key_document, indent=2, sort_keys=True))
        tmp.replace(path)

    def previous(self, target: str, node_id: str) -> dict | None:
        """The last key document built for the node, or None if never built or the index is damaged."""
        document, problem = _read_json(self._index_path(target, node_id))
        # a damaged index only costs `explain` its history; the build itself never reads it
        return document if problem is None and isinstance(document, dict) else None

    def clean(self) -> int:
        """Remove the whole store; returns bytes freed. Refuses a directory that is not a speechport cache."""
        if not self.root.exists():
            return 0
        if not (self.root / CACHE_MARKER).is_file():
            raise UserError(
                f"not a speechport cache (no {CACHE_MARKER} marker file in it); refusing to delete it",
                where=str(self.root),
                hint="point $SPEECHPORT_CACHE at the cache directory, or delete this directory yourself if you are sure",
            )
        size = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        shutil.rmtree(self.root)
        return size
