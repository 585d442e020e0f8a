"""onnxruntime on its CPU execution provider, single-threaded unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.session import StreamingSession


class OnnxRuntimeSession(StreamingSession):
    def __init__(self, artifact_dir: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        super().__init__(artifact_dir, threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(self.artifact_dir / self.contract.artifact), options, providers=["CPUExecutionProvider"]
        )
        self._outputs = [o.name for o in self._session.get_outputs()]

    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, feeds)))
