"""Deterministic tarballs, SHA256SUMS, and extraction that stays inside its target directory.

The archive's bytes depend only on the files' relative paths and contents: entries sorted, mtime
0, uid/gid 0 with no owner names, mode 0644 (0755 for directories), PAX format, gzip level 9 with
no name and mtime 0 in its header. Extraction refuses absolute paths, `..`, links and special
files, and reports a truncated or corrupt archive as such.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from pipeline.cache import sha256_file
from pipeline.errors import UserError

SUMS_FILE = "SHA256SUMS"


def bundle_files(root: Path) -> list[str]:
    """Every regular file under `root`, as sorted posix paths relative to it."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def write_sums(root: Path) -> Path:
    """`SHA256SUMS` in `sha256sum -c` format over every other file of the bundle."""
    lines = [f"{sha256_file(root / name)}  {name}\n" for name in bundle_files(root) if name != SUMS_FILE]
    path = root / SUMS_FILE
    path.write_text("".join(lines))
    return path


def read_sums(root: Path) -> dict[str, str]:
    path = root / SUMS_FILE
    if not path.is_file():
        raise UserError(f"has no {SUMS_FILE}: not a speechport bundle, or an incomplete one", where=str(root))
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise UserError(f"line {number} is not '<sha256>  <file>': {line[:80]!r}", where=str(path))
        sums[name] = digest
    return sums


def check_sums(root: Path) -> list[str]:
    """What differs from SHA256SUMS, one line per file, in path order: changed, missing or not listed."""
    sums = read_sums(root)
    present = set(bundle_files(root)) - {SUMS_FILE}
    problems = []
    for name in sorted(set(sums) | present):
        if name not in present:
            problems.append(f"{name}: listed in {SUMS_FILE} but missing from the bundle")
        elif name not in sums:
            problems.append(f"{name}: in the bundle but not listed in {SUMS_FILE}")
        elif sha256_file(root / name) != sums[name]:
            problems.append(f"{name}: content changed (SHA-256 differs from {SUMS_FILE})")
    return problems


def _entry(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    return info


def write_archive(root: Path, archive: Path) -> Path:
    """`archive` (.tar.gz) holding `root` as its one top-level directory, byte-identical for identical files."""
    files = bundle_files(root)
    directories = sorted({str(PurePosixPath(f).parent) for f in files} - {"."})
    directories = sorted({str(p) for d in directories for p in (PurePosixPath(d), *PurePosixPath(d).parents)} - {"."})
    entries = [(root.name, None)] + [(f"{root.name}/{d}", None) for d in directories] + [(f"{root.name}/{f}", root / f) for f in files]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in sorted(entries, key=lambda e: e[0]):
            if path is None:
                tar.addfile(_entry(name, directory=True))
            else:
                with open(path, "rb") as f:
                    tar.addfile(_entry(name, size=path.stat().st_size), f)
    tmp = archive.with_name(f".{archive.name}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(buffer.getvalue())
    tmp.replace(archive)
    return archive


def _unsafe(member: tarfile.TarInfo) -> str | None:
    """Why extracting `member` could write outside the target directory (or is no plain file), else None."""
    path = PurePosixPath(member.name)
    if member.name.startswith("/") or path.is_absolute() or (len(member.name) > 1 and member.name[1] == ":"):
        return "is an absolute path"
    if ".." in path.parts:
        return "climbs out with '..'"
    if member.issym() or member.islnk():
        return f"is a link (to {member.linkname!r}); bundles hold no links"
    if not (member.isfile() or member.isdir()):
        return "is a device, FIFO or other special file"
    return None


def safe_extract(archive: Path, destination: Path) -> Path:
    """Extract a bundle archive into `destination`; returns the bundle's top-level directory.

    Every member is checked before anything is written. Raises UserError naming the archive and
    the member for an unsafe entry, and for a truncated or corrupt archive.
    """
    where = str(archive)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()  # reads to the end: a truncated archive fails here, before writing
            for member in members:
                problem = _unsafe(member)
                if problem is not None:
                    raise UserError(f"refusing to extract member {member.name!r}: it {problem}", where=where)
            tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
            if len(tops) != 1:
                raise UserError(f"a bundle archive holds one top-level directory, this one holds {sorted(tops)[:5]}", where=where)
            destination.mkdir(parents=True, exist_ok=True)
            for member in members:
                target = destination / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                data = source.read() if source is not None else b""
                if len(data) != member.size:
                    raise UserError(f"member {member.name!r} is cut short ({len(data)} of {member.size} bytes)", where=where)
                target.write_bytes(data)
    except (tarfile.ReadError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise UserError(
            f"truncated or corrupt archive ({type(exc).__name__}: {exc})", where=where, hint="download or copy the bundle again"
        ) from None
    return destination / tops.pop()


def archive_sha256(archive: Path) -> str:
    return hashlib.sha256(archive.read_bytes()).hexdigest()
