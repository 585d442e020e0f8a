"""`speechport verify-bundle`: sums, contracts, then golden replay on each variant's own runtime.

A directory is checked where it is; an archive is first extracted (safely) into a temporary
directory. The first problem of each kind is reported by file, and for vectors by step.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from pipeline.contract import CONTRACT_FILE, read_contract
from pipeline.errors import UserError
from pipeline.release.archive import check_sums, safe_extract


@dataclass
class BundleCheck:
    root: Path
    variants: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def variant_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob(f"*/{CONTRACT_FILE}"))


def check_directory(root: Path, replay: bool = True, log=lambda message: None) -> BundleCheck:
    from pipeline.backends import get_backend, known_backends
    from pipeline.release import golden

    result = BundleCheck(root)
    problems = check_sums(root)
    if problems:
        result.problems.append(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        return result  # a changed file makes every later check meaningless
    log("sums: every file matches SHA256SUMS")
    for variant in variant_dirs(root):
        name = variant.relative_to(root).as_posix()
        result.variants.append(name)
        try:
            contract = read_contract(variant)
        except (ValidationError, json.JSONDecodeError) as exc:
            result.problems.append(f"{name}/{CONTRACT_FILE}: not a valid contract: {str(exc).splitlines()[0]}")
            continue
        if not (variant / golden.GOLDEN_DIR / golden.GOLDEN_FILE).is_file():
            result.problems.append(f"{name}/{golden.GOLDEN_DIR}/{golden.GOLDEN_FILE}: missing")
            continue
        backend = golden.runtime_backend(variant)
        if backend not in known_backends():
            result.problems.append(f"{name}/{golden.GOLDEN_DIR}/{golden.GOLDEN_FILE}: backend {backend!r} is not one this speechport runs")
            continue
        if not (variant / contract.artifact).exists():
            result.problems.append(f"{name}/{contract.artifact}: the contract's artifact is missing")
            continue
        if not replay:
            continue
        found = golden.replay(variant)
        result.problems += [f"{name}/{p}" for p in found]
        log(f"{name}: golden vectors {'replayed, equal' if not found else 'DIFFER'} on {get_backend(backend).runtime_label or backend}")
    if not result.variants:
        result.problems.append(f"no variant directory (one holding {CONTRACT_FILE}) in the bundle")
    return result


def check_bundle(path: Path, replay: bool = True, log=lambda message: None) -> BundleCheck:
    path = Path(path)
    if path.is_dir():
        return check_directory(path, replay, log)
    if not path.is_file():
        raise UserError("no such bundle directory or archive", where=str(path))
    with tempfile.TemporaryDirectory(prefix="speechport-bundle-") as tmp:
        root = safe_extract(path, Path(tmp))
        log(f"extracted {path.name} safely")
        result = check_directory(root, replay, log)
        result.root = path
        return result
