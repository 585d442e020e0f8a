"""qnn-htp: the QDQ graph compiled for the Hexagon DSP, every node on HTP, plus the files a DSP integration receives.

- placement: onnxruntime's QNN EP on the HTP backend of each SoC's generation with CPU fallback
  disabled; a node HTP cannot run fails the stage with the SoC, its name, op type, the EP's reason
  and, where one exists, the rewrite that would legalize it;
- `model.dlc`: the graph as a Qualcomm DLC container (QNN IR backend);
- `htp/<arch>-<soc>/model_ctx.onnx` + `model_ctx_qnn.bin`: an EP-context model and its QNN
  context binary per SoC the manifest lists;
- the EP-context check: each SoC's EP-context model is reloaded and streamed, on its own state,
  against the QDQ graph compiled for the same SoC; they must agree bit for bit;
- `contract.json` gains `backend_metadata.qnn`: SDK versions, the SoCs and files (bytes, SHA-256),
  and every tensor's encoding (scale, offset = -zero point, bit width); `qnn.json` holds the same
  plus the check.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.backends.qnn.compile import DLC_DIR, CompileRequest, context_model
from pipeline.backends.qnn.options import DEFAULT_SOCS, Soc
from pipeline.backends.qnn.ops import LEGALIZATIONS, REWRITTEN
from pipeline.backends.qnn.files import ARTIFACT, DLC_FILE, ENCODINGS_FILE, GUARD_FILE, METADATA_FILE
from pipeline.cache import Artifact, sha256_file
from pipeline.contract import read_contract, write_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import ToolchainError
from pipeline.verify.records import load_calibration

TOOL = "onnxruntime-qnn"

class HtpConfig(StageConfig):
    socs: tuple[Soc, ...] = Field(DEFAULT_SOCS, min_length=1, description="SoCs to write EP-context models and context binaries for.")
    variant: str = Field("", exclude=True, description="Variant name for messages (not part of the key).")
    check_steps: int = Field(25, gt=0, description="Calls each EP-context model is streamed against the QDQ graph.")
    timeout_seconds: int = Field(1800, gt=0, description="Longest the compile subprocess may take.")


def refused_nodes(log: str) -> list[dict[str, str]]:
    """The nodes the QNN EP's verbose log says HTP refused: name, op type and the EP's reason."""
    found, pending = [], []
    for line in log.splitlines():
        if "Validation FAILED" in line:
            pending = []
        elif (match := re.match(r"\s*Operator type: (\S+) Node name: (.*?) Node index: \d+", line)) is not None:
            pending.append({"op": match.group(1), "node": match.group(2)})
        elif (match := re.match(r"\s*REASON : (.*)", line)) is not None and pending:
            found += [p | {"reason": match.group(1).strip()} for p in pending]
            pending = []
    # the EP's error-level summary, logged whatever the verbosity: "Unsupported nodes in QNN EP: { name: N, type: T }"
    for name, op in re.findall(r"\{ name: (.*?), type: (\w+) \}", log):
        if not any(f["node"] == name for f in found):
            found.append({"op": op, "node": name, "reason": "unsupported by QNN EP"})
    unique = {(f["node"], f["op"]): f for f in found}
    return list(unique.values())


def placement_error(refused: list[dict[str, str]], failure: dict, variant: str, where: str) -> ToolchainError:
    if not refused:
        return ToolchainError(f"HTP {failure['step']} failed: {failure['message']}", tool=TOOL, stage=where, variant=variant)
    # the Q/DQ nodes of a refused op's node unit are listed with it; name the op itself
    ops = [r for r in refused if r["op"] not in ("QuantizeLinear", "DequantizeLinear")] or refused
    parts = []
    for r in ops:
        fix = LEGALIZATIONS.get(r["op"])
        if fix and r["op"] in REWRITTEN:
            fix += " (qnn-legalize applies it to the float graph; this node came after it)"
        parts.append(f"node {r['node']!r} ({r['op']}): {r['reason']}" + (f"; legalization: {fix}" if fix else "; no known legalization"))
    return ToolchainError(
        f"HTP cannot run {len(ops)} node(s) ({failure['step']}) and CPU fallback is disabled (the whole graph must run on the "
        "DSP): " + "; ".join(parts),
        tool=TOOL,
        stage=where,
        variant=variant,
        op=", ".join(sorted({r["op"] for r in ops})),
    )


def compile_in_subprocess(model: Path, out: Path, socs: tuple[Soc, ...], timeout: int, variant: str, where: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="speechport-qnn-"))
    try:
        request = CompileRequest(model=model, out=out, socs=socs, error=workdir / "error.json")
        (workdir / "request.json").write_text(request.model_dump_json())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(Path(__file__).resolve().parents[3]), env.get("PYTHONPATH"))))
        command = [sys.executable, "-m", "pipeline.backends.qnn.compile", str(workdir / "request.json")]
        try:
            done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ToolchainError(f"HTP compile did not finish within {timeout} s (raise timeout_seconds)", tool=TOOL, stage=where, variant=variant) from None
        if done.returncode != 0:
            if request.error.is_file():
                failure = json.loads(request.error.read_text())
            else:
                tail = " | ".join(line for line in done.stderr.splitlines()[-4:] if line.strip())
                failure = {"step": "compile", "message": f"the compile process died (exit {done.returncode}): {tail}"}
            raise placement_error(refused_nodes(done.stderr), failure, variant, where)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def file_entry(path: Path, root: Path) -> dict:
    return {"file": path.relative_to(root).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def check_contexts(out: Path, socs: tuple[Soc, ...], recorded: dict[str, np.ndarray], steps: int, variant: str, where: str) -> dict:
    """Each SoC's EP-context model against the QDQ graph on the same SoC, each streaming on its own state."""
    from pipeline.backends.qnn.session import QnnSession

    contract = read_contract(out)
    spec = contract.stream
    count = len(recorded[spec.input_names[0]])
    picks = np.linspace(0, count - 1, min(steps, count)).round().astype(int)
    # the recorded chunks in order: real speech, not contiguous, which is all a bit-exactness check needs
    chunks = [{i.name: recorded[i.name][k] for i in spec.inputs} for k in picks]
    results = {}
    for soc in socs:
        entry = soc.model_dump()
        qdq = QnnSession(out, soc=entry)
        context = QnnSession(out, model=context_model(out, soc), soc=entry)
        a, _ = qdq.stream(chunks)
        b, _ = context.stream(chunks)
        worst = {name: float(np.abs(a[name] - b[name]).max()) for name in a}
        results[soc.label] = {"calls": len(chunks), "max_abs": worst, "identical": all(v == 0.0 for v in worst.values())}
        if not results[soc.label]["identical"]:
            raise ToolchainError(
                f"the EP-context model for {soc.label} does not reproduce the QDQ graph compiled for the same SoC over "
                f"{len(chunks)} streamed calls: max abs difference {worst}",
                tool=TOOL,
                stage=where,
                variant=variant,
            )
    return results


class HtpStage(Stage):
    name = "qnn-htp"
    version = "2"  # 2: placement checked on each SoC's own HTP generation
    tools = ("onnx", "onnxruntime", "onnxruntime-qnn")
    Config = HtpConfig

    @classmethod
    def run(cls, config: HtpConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        from pipeline.backends.qnn.runtime import versions

        source = inputs["model"].path
        contract = read_contract(source)
        variant = config.variant or f"qnn-{contract.precision}"
        sdk = versions()  # fails first, naming the package, when onnxruntime-qnn is missing or broken
        for name in (ARTIFACT, ENCODINGS_FILE, GUARD_FILE):
            shutil.copyfile(source / name, out / name)
        compile_in_subprocess(out / ARTIFACT, out, config.socs, config.timeout_seconds, variant, ctx.node_id)

        dumped = sorted((out / DLC_DIR).glob("*.dlc"))
        if len(dumped) != 1:
            raise ToolchainError(f"the QNN IR backend wrote {len(dumped)} DLC files, expected one graph", tool=TOOL, stage=ctx.node_id, variant=variant)
        dumped[0].replace(out / DLC_FILE)
        shutil.rmtree(out / DLC_DIR)

        socs = []
        for soc in config.socs:
            model = context_model(out, soc)
            binaries = sorted(model.parent.glob("*.bin"))
            socs.append(soc.model_dump() | {"context_model": file_entry(model, out), "context_binaries": [file_entry(b, out) for b in binaries]})
        encodings = json.loads((out / ENCODINGS_FILE).read_text())
        metadata = {
            "versions": sdk,
            "socs": socs,
            "dlc": file_entry(out / DLC_FILE, out),
            "qdq_model": file_entry(out / ARTIFACT, out),
            "cpu_fallback": "disabled: every node runs on HTP",
            "encodings": encodings,
            "encoding_convention": "real = scale * (q + offset); offset = -zero_point",
        }
        write_contract(out, contract.model_copy(update={"backend_metadata": {"qnn": metadata}}))
        check = check_contexts(out, config.socs, load_calibration(inputs["calibration"].path), config.check_steps, variant, ctx.node_id)
        state_ranges = json.loads((out / GUARD_FILE).read_text())
        (out / METADATA_FILE).write_text(json.dumps(metadata | {"ep_context_check": check, "state_ranges": state_ranges}, indent=1) + "\n")
        sizes = ", ".join(f"{s['name']} {sum(b['bytes'] for b in s['context_binaries']) / 1e3:.0f} kB" for s in socs)
        ctx.log(f"{variant}: all nodes on HTP; DLC {metadata['dlc']['bytes'] / 1e3:.0f} kB; context binaries {sizes}; EP-context models identical to the QDQ graph")
