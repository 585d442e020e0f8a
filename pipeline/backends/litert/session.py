"""LiteRT (TFLite) interpreter on the CPU, tensors addressed by the indices the contract's names resolve to."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.session import StreamingSession, from_binding, to_binding


class LiteRtSession(StreamingSession):
    def __init__(self, artifact_dir: Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        super().__init__(artifact_dir, threads)
        self._interpreter = Interpreter(model_path=str(self.artifact_dir / self.contract.artifact), num_threads=threads)
        self._interpreter.allocate_tensors()
        index = {d["name"]: d["index"] for d in (*self._interpreter.get_input_details(), *self._interpreter.get_output_details())}
        bindings = self.contract.bindings
        missing = [bindings[n].name for n in (*self.spec.input_names, *self.spec.output_names) if bindings[n].name not in index]
        if missing:
            raise KeyError(f"{self.artifact_dir / self.contract.artifact} has no I/O tensor named {missing}; it has {sorted(index)}")
        # per tensor: (contract name, tensor index, binding or None when the artifact takes the contract's float32 as is)
        self._inputs = [(n, index[bindings[n].name], self._conversion(n)) for n in self.spec.input_names]
        self._outputs = [(n, index[bindings[n].name], self._conversion(n)) for n in self.spec.output_names]
        self._set, self._get, self._run = self._interpreter.set_tensor, self._interpreter.get_tensor, self._interpreter.invoke

    def _conversion(self, name: str):
        binding = self.contract.bindings[name]
        plain = binding.permutation is None and binding.quantization is None and binding.dtype == "float32"
        return None if plain else binding

    def call(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # the base class's generic path, minus the per-call dictionaries: this runs once per 20 ms of audio
        for name, index, binding in self._inputs:
            value = feeds[name]
            self._set(index, np.ascontiguousarray(value, dtype=np.float32) if binding is None else to_binding(value, binding))
        self._run()
        results = {}
        for name, index, binding in self._outputs:
            value = self._get(index)  # a copy, so feeding it back as state is safe
            results[name] = value if binding is None else from_binding(value, binding)
        return results

    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        bindings = self.contract.bindings
        for name, index, _ in self._inputs:
            self._set(index, feeds[bindings[name].name])
        self._run()
        return {bindings[name].name: self._get(index) for name, index, _ in self._outputs}
