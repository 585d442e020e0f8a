"""Streaming sessions on a QNN artifact: the HTP simulator (what verification runs), and the CPU EP for comparison.

Both run the same integer-I/O QDQ graph through the contract's quantized bindings: chunk and
state are quantized by each tensor's scale and zero point on the way in, outputs dequantized on
the way out, exactly as an app does around the context binary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.session import StreamingSession


class QnnSession(StreamingSession):
    """onnxruntime + QNN EP on the HTP backend (simulated on x86), CPU fallback disabled.

    By default the QDQ graph compiled for the first SoC the artifact lists; `model` and `soc` pick
    another file (an EP-context model) or SoC.
    """

    def __init__(self, artifact_dir: Path, threads: int = 1, model: Path | None = None, soc: dict | None = None) -> None:
        from pipeline.backends.qnn.runtime import htp_session, soc_options

        super().__init__(artifact_dir, threads)
        soc = soc if soc is not None else self.contract.backend_metadata["qnn"]["socs"][0]
        path = model if model is not None else self.artifact_dir / self.contract.artifact
        self._session = htp_session(path, soc_options(soc["soc_model"], soc["htp_arch"]), threads=threads)
        self._outputs = [o.name for o in self._session.get_outputs()]

    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, feeds)))


class QdqCpuSession(StreamingSession):
    """The same QDQ graph on onnxruntime's CPU execution provider: not a stand-in for HTP, only compared with it."""

    def __init__(self, artifact_dir: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        super().__init__(artifact_dir, threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(self.artifact_dir / self.contract.artifact), options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]

    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, feeds)))
