"""The qnn backend's own figures in a variant's verification record.

- `cpu_ep_vs_htp`: the same QDQ graph streamed on onnxruntime's CPU execution provider, on its
  own state, against the HTP simulator's outputs: per output the agreement of per-frame decisions
  (arg-max; p >= threshold) and the largest difference, and for CTC outputs the CER of one
  transcript against the other. This is why the CPU EP is no proxy for HTP: it is reported, never
  verified against.
- `files`: the DLC and each SoC's EP-context model and context binary, with bytes and SHA-256;
- `ep_context_check`: each EP-context model streamed against the QDQ graph (identical calls);
- `sdk`: onnxruntime-qnn and the QNN SDK it ships.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def figures(artifact_dir: Path, chunks: list[dict[str, np.ndarray]], outputs: dict[str, np.ndarray]) -> dict:
    from pipeline.audio.ctc import cer, ctc_greedy
    from pipeline.backends.qnn.files import METADATA_FILE
    from pipeline.backends.qnn.session import QdqCpuSession
    from pipeline.verify.decisions import agreement, decisions
    from pipeline.verify.metrics import per_frame

    cpu = QdqCpuSession(artifact_dir)
    spec = cpu.spec
    cpu_outputs, _ = cpu.stream(chunks)
    compared = {}
    for o in spec.outputs:
        htp, other = outputs[o.name], cpu_outputs[o.name]
        entry: dict = {"max_abs": float(np.abs(htp - other).max())}
        if o.kind in ("decision_logits", "probability"):
            entry["decision_agreement"] = agreement(decisions(other, o), decisions(htp, o))
        elif o.kind == "ctc_logits":
            frames_htp, frames_cpu = per_frame(htp, o.time_axis), per_frame(other, o.time_axis)
            entry["decision_agreement"] = agreement(frames_cpu.argmax(-1), frames_htp.argmax(-1))
            if spec.decoder is not None and spec.decoder.kind == "ctc_greedy":
                vocabulary, blank = spec.decoder.vocabulary, spec.decoder.blank
                entry["cer_cpu_vs_htp"] = cer(ctc_greedy(frames_htp, vocabulary, blank), ctc_greedy(frames_cpu, vocabulary, blank))
        compared[o.name] = entry
    metadata = json.loads((artifact_dir / METADATA_FILE).read_text())
    files = {"dlc": metadata["dlc"], "qdq_model": metadata["qdq_model"]}
    for soc in metadata["socs"]:
        files[f"{soc['htp_arch']}-{soc['name']}"] = {"context_model": soc["context_model"], "context_binaries": soc["context_binaries"]}
    return {
        "cpu_ep_vs_htp": compared,
        "cpu_ep_vs_htp_calls": len(chunks),
        "files": files,
        "ep_context_check": metadata["ep_context_check"],
        "sdk": metadata["versions"],
    }
