"""The PyTorch reference: the trace stage's ExportedProgram (or its TorchScript fallback), on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.session import StreamingSession


class TorchSession(StreamingSession):
    def __init__(self, artifact_dir: Path, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)
        super().__init__(artifact_dir, threads)
        self._torch = torch
        path = self.artifact_dir / self.contract.artifact
        if path.suffix == ".pt2":
            self._module = torch.export.load(str(path)).module()
        else:
            self._module = torch.jit.load(str(path), map_location="cpu").eval()
        self._inputs = [self.contract.bindings[n].name for n in self.spec.input_names]
        self._outputs = [self.contract.bindings[n].name for n in self.spec.output_names]

    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            results = self._module(*(torch.from_numpy(feeds[name]) for name in self._inputs))
        return {name: value.numpy() for name, value in zip(self._outputs, results)}
