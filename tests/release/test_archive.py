"""Deterministic archives and safe extraction: no absolute paths, no `..`, no links; truncation is a clear error."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.release.archive import archive_sha256, check_sums, safe_extract, write_archive, write_sums


def _bundle(root: Path) -> Path:
    (root / "v" / "golden").mkdir(parents=True)
    (root / "v" / "model.bin").write_bytes(b"\x00\x01" * 100)
    (root / "v" / "golden" / "a.npy").write_bytes(b"abc")
    (root / "README.md").write_text("hello\n")
    write_sums(root)
    return root


def test_archive_bytes_depend_only_on_names_and_contents(tmp_path: Path) -> None:
    first = _bundle(tmp_path / "one" / "b")
    second = _bundle(tmp_path / "two" / "b")
    os.utime(second / "README.md", (1, 1))
    os.chmod(second / "v" / "model.bin", 0o600)
    a, b = write_archive(first, tmp_path / "one.tar.gz"), write_archive(second, tmp_path / "two.tar.gz")
    assert archive_sha256(a) == archive_sha256(b)
    with tarfile.open(a) as tar:
        names = tar.getnames()
        assert names == sorted(names) and all(m.mtime == 0 and m.uid == 0 and not m.uname for m in tar.getmembers())
    root = safe_extract(a, tmp_path / "x")
    assert root.name == "b" and not check_sums(root)


def _hostile(path: Path, name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        data = b"" if kind != tarfile.REGTYPE else b"x"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "name, kind, link, reason",
    [
        ("b/../../x", tarfile.REGTYPE, "", "'..'"),
        ("../x", tarfile.REGTYPE, "", "'..'"),
        ("/etc/x", tarfile.REGTYPE, "", "absolute"),
        ("b/link", tarfile.SYMTYPE, "/etc/passwd", "link"),
        ("b/hard", tarfile.LNKTYPE, "../../x", "link"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path: Path, name: str, kind: bytes, link: str, reason: str) -> None:
    archive = _hostile(tmp_path / "evil.tar.gz", name, kind, link)
    with pytest.raises(UserError, match=reason) as error:
        safe_extract(archive, tmp_path / "out")
    assert name in str(error.value) and not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_a_truncated_archive_is_a_clear_error(tmp_path: Path) -> None:
    archive = write_archive(_bundle(tmp_path / "b"), tmp_path / "b.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt archive"):
        safe_extract(archive, tmp_path / "out")


def test_verify_bundle_of_a_hostile_archive_exits_2_naming_the_member(tmp_path: Path, capsys) -> None:
    from pipeline.cli import main

    archive = _hostile(tmp_path / "evil.tar.gz", "../x")
    assert main(["verify-bundle", str(archive)]) == 2
    assert "refusing to extract member '../x'" in capsys.readouterr().err
