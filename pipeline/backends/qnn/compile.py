"""The QNN compile subprocess: placement on HTP, the DLC, and one EP-context model per SoC.

    python -m pipeline.backends.qnn.compile request.json

Run out of process because the QNN EP reports which node HTP refused only in its verbose log,
written to the process's stderr by the native library, and because a failing HTP graph
finalization can take the process down. Each session has CPU fallback disabled, so each
succeeds only if every node runs on HTP.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipeline.backends.qnn.options import Soc

DLC_DIR = "dlc"
CONTEXT_DIR = "htp"
CONTEXT_MODEL = "model_ctx.onnx"


class CompileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path = Field(description="QDQ ONNX graph to compile.")
    out: Path = Field(description="Directory receiving dlc/ and htp/<soc>/.")
    socs: tuple[Soc, ...] = Field(description="SoCs to write an EP-context model and context binary for.")
    error: Path = Field(description="Where a failure is described as JSON (step, message).")


def context_model(out: Path, soc: Soc) -> Path:
    return out / CONTEXT_DIR / soc.label / CONTEXT_MODEL


def _compile(request: CompileRequest) -> None:
    from pipeline.backends.qnn.runtime import htp_session, ir_backend_path, qnn_package, soc_options

    step = "placement"
    try:
        # verbose: the EP logs 'Validation FAILED ... Operator type ... Node name ... REASON' per node it refuses.
        # On each SoC's own HTP generation: what HTP runs depends on it (a MatMul with 16-bit weights runs as a16w16
        # FullyConnected on v73 and v75, not on the EP's default generation)
        for soc in request.socs:
            step = f"placement {soc.label}"
            htp_session(request.model, soc_options(soc.soc_model, soc.htp_arch), log_severity=0)
        step = "dlc"
        dlc = request.out / DLC_DIR
        dlc.mkdir(parents=True)
        ir = {"dump_qnn_ir_dlc": "1", "dump_qnn_ir_dlc_dir": str(dlc), "qnn_ir_backend_path": ir_backend_path(qnn_package())}
        htp_session(request.model, ir)
        for soc in request.socs:
            step = f"context {soc.label}"
            path = context_model(request.out, soc)
            path.parent.mkdir(parents=True)
            config = {"ep.context_enable": "1", "ep.context_file_path": str(path), "ep.context_embed_mode": "0"}
            htp_session(request.model, soc_options(soc.soc_model, soc.htp_arch), config)
    except Exception as exc:  # onnxruntime raises its own Fail/EPFail types; the parent turns them into ToolchainErrors
        request.error.write_text(json.dumps({"step": step, "message": str(exc)}))
        raise SystemExit(1) from None


if __name__ == "__main__":
    _compile(CompileRequest.model_validate_json(Path(sys.argv[1]).read_text()))
