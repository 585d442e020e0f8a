"""Write one platform's release bundle from a finished build: directory, SHA256SUMS and .tar.gz.

    speechport-<target>-<version>/
      README.md            how to use this bundle (generated from the report and contracts)
      MODEL_CARD.md        the model's card from models/, when it has one
      provenance.json      manifest, stage keys, tool versions, git commit and dirty flag
      report/              report.json, report.md, drift.png, sensitivity.png of the verification
      <variant>/           the artifact, contract.json, golden/, client/ (generated from the contract)
      SHA256SUMS           every other file

Only a build whose report passed is released. The bundle is staged next to its final place and
renamed into it, so a failed release leaves no half-written bundle.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.cache import Artifact, artifact_bytes
from pipeline.contract import read_contract
from pipeline.errors import VerificationFailed
from pipeline.release.archive import write_archive, write_sums

_SKIP = {"key.json", "artifact.json", "run.json", "timings.json", ".speechport-output"}
REPORT_FILES = ("report.json", "report.md", "drift.png", "sensitivity.png")


@dataclass(frozen=True)
class Bundle:
    directory: Path
    archive: Path
    variants: tuple[str, ...]


def _copy_tree(source: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.iterdir()):
        if item.name in _SKIP:
            continue
        if item.is_dir():
            _copy_tree(item, destination / item.name)
        else:
            shutil.copyfile(item, destination / item.name)  # contents only: no mode or mtime from the cache


def model_card(factory: str, repo: Path) -> Path | None:
    module = factory.split(":")[0]
    card = repo / Path(*module.split(".")).with_suffix(".md")
    return card if card.is_file() else None


def write_bundle(
    *, version: str, platform: str, manifest_path: Path, graph: Any, built: Mapping[str, Artifact], out_root: Path, repo: Path,
    golden_steps: int,
) -> Bundle:
    from pipeline.audio.stream import speech_stream
    from pipeline.release import golden
    from pipeline.release.platforms import client_generator, varying_files
    from pipeline.release.provenance import provenance
    from pipeline.report.stage import variant_inputs

    report_dir = built["report"].path
    report = json.loads((report_dir / "report.json").read_text())
    if not report["passed"]:
        failed = [v["name"] for v in report["variants"] if not v["passed"]]
        raise VerificationFailed(f"{report['target']}: not released, verification failed for {', '.join(failed)}; see {report_dir / 'report.md'}")
    name = f"speechport-{report['target']}-{version}"
    out_root.mkdir(parents=True, exist_ok=True)
    staging = out_root / f".{name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    _copy_tree(report_dir, staging / "report")
    card = model_card(report["model"], repo)
    if card is not None:
        shutil.copyfile(card, staging / "MODEL_CARD.md")
    variants, backends = [], []
    audio_cache: dict[str, Any] = {}
    for role, verify_id in variant_inputs(graph.nodes["report"]):  # a variant's run on the noisy copy ships nothing
        artifact_id = dict(graph.nodes[verify_id].inputs)["model"]
        variant_dir = staging / role
        _copy_tree(built[artifact_id].path, variant_dir)
        contract = read_contract(variant_dir)
        data = graph.nodes[verify_id].config.data
        if data.split_sha256 not in audio_cache:
            audio_cache[data.split_sha256] = speech_stream(data, contract.stream).audio
        source = {"stream": "the verification stream from its first sample", "split": data.split, "split_sha256": data.split_sha256}
        backend = graph.nodes[verify_id].config.backend
        golden.record(variant_dir, backend, audio_cache[data.split_sha256], variant_dir / golden.GOLDEN_DIR, source, steps=golden_steps)
        generate = client_generator(backend)
        if generate is not None:
            generate(contract, variant_dir / "client")
        variants.append(role)
        backends.append(backend)
    document = provenance(version=version, platform=platform, manifest_path=manifest_path, repo=repo, graph=graph, built=built)
    document["not_reproducible"] = varying_files(backends)
    (staging / "provenance.json").write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    (staging / "README.md").write_text(bundle_readme(name, report, staging, variants, platform))
    write_sums(staging)
    final = out_root / name
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    archive = write_archive(final, out_root / f"{name}.tar.gz")
    return Bundle(final, archive, tuple(variants))


def bundle_readme(name: str, report: dict, root: Path, variants: list[str], platform: str) -> str:
    by_name = {v["name"]: v for v in report["variants"]}
    rows = []
    for variant in variants:
        v = by_name[variant]
        contract = read_contract(root / variant)
        size = artifact_bytes(root / variant / contract.artifact) / 1e6
        cer = f"{v['cer']:.3f}" if "cer" in v else "-"
        vs_ref = f"{v['cer_vs_reference']:.3f}" if "cer_vs_reference" in v else "-"
        agreement = f"{v['decision_agreement']:.4f}" if "decision_agreement" in v else "-"
        clients = ", ".join(sorted(p.name for p in (root / variant / "client").glob("*"))) if (root / variant / "client").is_dir() else "-"
        rows.append(f"| `{variant}` | `{contract.artifact}` | {size:.2f} MB | {cer} | {vs_ref} | {agreement} | {clients} |")
    return "\n".join(
        [
            f"# {name}",
            "",
            f"{report.get('description', '')}",
            "",
            f"Platform `{platform}`, target `{report['target']}`, model `{report['model']}`. Every variant below passed "
            "verification: minutes of real speech streamed through it on its own runtime, carrying its own state, "
            "held to the PyTorch reference (`report/report.md`).",
            "",
            "| variant | artifact | size | CER | CER vs PyTorch | decision agreement | client |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "## Using a variant",
            "",
            "1. Read `<variant>/contract.json`: chunk size, frontend, inputs, the state pairs to feed back, outputs, "
            "decoder, and per tensor its name, shape, dtype, layout permutation and quantization inside the artifact. "
            "Its `usage` list is the loop in words.",
            "2. Start from `<variant>/client/`: the whole loop generated from that contract (ring buffer, frontend, "
            "run, state feedback, decode, reset).",
            "3. Check your loop on the device with `<variant>/golden/` (see `golden.json`): feed `input.*` and "
            "`state_in.*` of step k and compare with `output.*` of step k; then run your frontend on `audio.npy` and "
            "compare with `input.*`; then run your closed loop from reset on `audio.npy` and compare every step.",
            "",
            "## Checking this bundle",
            "",
            "`sha256sum -c SHA256SUMS` checks the files; `speechport verify-bundle <this directory or its .tar.gz>` "
            "checks the sums and contracts and replays the golden vectors on each variant's runtime; "
            "`speechport stream <variant or bundle> <audio.wav>` runs the reference client. `provenance.json` says how "
            "the bundle was made (manifest, stage keys, tool versions, git commit); its `not_reproducible` list names "
            "the files a rebuild from empty caches changes, and why (every other file is byte-identical).",
            "",
        ]
    )

