"""onnx: export the traced explicit-state forward with the contract's tensor names."""

from __future__ import annotations


import warnings
from pathlib import Path

from pydantic import Field

from pipeline.cache import Artifact
from pipeline.contract import identity_bindings, read_contract, write_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import UserError
from pipeline.onnx_graph import ONNX_FILE as ARTIFACT
from pipeline.onnx_graph import check_onnx_io



class OnnxConfig(StageConfig):
    opset: int = Field(17, description="ONNX opset to export at.")
    do_constant_folding: bool = Field(True, description="Fold constants during export.")


class OnnxStage(Stage):
    name = "onnx"
    version = "1"
    tools = ("torch", "onnx")
    Config = OnnxConfig

    @classmethod
    def run(cls, config: OnnxConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        import onnx
        import torch

        source = inputs["model"].path
        contract = read_contract(source)
        spec = contract.stream
        module = torch.jit.load(str(source / contract.artifact), map_location="cpu").eval()
        example = tuple(torch.zeros(i.shape) for i in spec.inputs) + tuple(torch.full(s.shape, s.init) for s in spec.states)
        try:
            with warnings.catch_warnings():
                # exporting a ScriptModule always warns that it has no Python signature; the names come from the contract
                warnings.filterwarnings("ignore", message="no signature found", category=UserWarning)
                torch.onnx.export(
                    module,
                    example,
                    str(out / ARTIFACT),
                    input_names=spec.input_names,
                    output_names=spec.output_names,
                    opset_version=config.opset,
                    do_constant_folding=config.do_constant_folding,
                    dynamo=False,
                )
        except Exception as exc:  # the exporter's own error names the unsupported op; pass it on with context
            raise UserError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}", where=f"stage onnx ({ctx.node_id})") from None
        onnx.checker.check_model(str(out / ARTIFACT))
        check_onnx_io(out / ARTIFACT, spec.input_names, spec.output_names, f"stage onnx ({ctx.node_id})")
        write_contract(
            out,
            contract.model_copy(update={"backend": "onnx", "artifact": ARTIFACT, "bindings": identity_bindings(spec)}),
        )



