"""The PyTorch reference: the traced TorchScript module, run eagerly on the CPU."""

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
        self._module = torch.jit.load(str(self.artifact_dir / self.contract.artifact), map_location="cpu").eval()
        self._inputs = [self.contract.bindings[n].name for n in self.spec.input_names]
        self._outputs = [self.contract.bindings[n].name for n in self.spec.output_names]

    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            results = self._module(*(torch.from_numpy(feeds[name]) for name in self._inputs))
        return {name: value.numpy() for name, value in zip(self._outputs, results)}
