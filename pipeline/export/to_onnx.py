"""onnx: the captured explicit-state forward as ONNX with the contract's tensor names: the dynamo exporter
from the ExportedProgram, or the TorchScript exporter for the fallback trace."""

from __future__ import annotations


import contextlib
import io
import traceback
import warnings
from pathlib import Path

from pydantic import Field

from pipeline.cache import Artifact
from pipeline.contract import identity_bindings, read_contract, write_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import ToolchainError
from pipeline.export.logs import exporter_log
from pipeline.onnx_graph import ONNX_FILE as ARTIFACT
from pipeline.onnx_graph import check_onnx_io



class OnnxConfig(StageConfig):
    opset: int = Field(18, description="ONNX opset to export at (the dynamo exporter writes 18 and above).")
    do_constant_folding: bool = Field(True, description="Fold constants during export (TorchScript route).")


class OnnxStage(Stage):
    name = "onnx"
    version = "2"
    tools = ("torch", "onnx", "onnxscript", "onnx-ir")
    Config = OnnxConfig

    @classmethod
    def run(cls, config: OnnxConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        import onnx
        import torch

        source = inputs["model"].path
        contract = read_contract(source)
        spec = contract.stream
        example = tuple(torch.zeros(i.shape) for i in spec.inputs) + tuple(torch.full(s.shape, s.init) for s in spec.states)
        names = {"input_names": spec.input_names, "output_names": spec.output_names, "opset_version": config.opset}
        transcript = io.StringIO()
        try:
            with contextlib.redirect_stdout(transcript), contextlib.redirect_stderr(transcript), warnings.catch_warnings():
                if contract.artifact.endswith(".pt2"):
                    program = torch.export.load(str(source / contract.artifact))
                    torch.onnx.export(program, example, str(out / ARTIFACT), dynamo=True, external_data=False, **names)
                else:
                    # exporting a ScriptModule always warns that it has no Python signature; the names come from the contract
                    warnings.filterwarnings("ignore", message="no signature found", category=UserWarning)
                    module = torch.jit.load(str(source / contract.artifact), map_location="cpu").eval()
                    torch.onnx.export(module, example, str(out / ARTIFACT), do_constant_folding=config.do_constant_folding, dynamo=False, **names)
        except Exception as exc:  # the exporter's own error names the unsupported op; its whole output goes to the log
            log = exporter_log(ctx.node_id)
            log.write_text(transcript.getvalue() + "\n" + traceback.format_exc())
            first = " ".join(str(exc).strip().splitlines()[0].split())[:300] if str(exc).strip() else type(exc).__name__
            raise ToolchainError(f"torch.onnx.export failed: {type(exc).__name__}: {first}; full output: {log}", tool="torch", stage=ctx.node_id) from None
        onnx.checker.check_model(str(out / ARTIFACT))
        check_onnx_io(out / ARTIFACT, spec.input_names, spec.output_names, f"stage onnx ({ctx.node_id})")
        write_contract(
            out,
            contract.model_copy(update={"backend": "onnx", "artifact": ARTIFACT, "bindings": identity_bindings(spec)}),
        )



