"""Core ML sessions: Apple's runtime on macOS, the MIL reference interpreter elsewhere.

Both take the contract's float32 tensors by name. For a model whose state lives inside it
(`contract.state_in_model`), `reset()` makes a new model state and `advance()` feeds the chunk
only, the state updating in place as on a device; the state outputs the pipeline compares are
read back from the model's state after each call. `call()` (one call from explicit state, as
teacher forcing needs) writes the given state into a fresh model state first.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from pipeline.session import StreamingSession


class _Interpreted:
    """The MIL reference interpreter behind the same three calls as Core ML's MLModel."""

    def __init__(self, package: Path) -> None:
        from pipeline.backends.coreml.interpreter import MilInterpreter, UnsupportedMilOp
        from pipeline.errors import ToolchainError

        try:
            self._program = MilInterpreter(package)
        except UnsupportedMilOp as error:  # the model is fine; this Linux stand-in for Core ML cannot run it yet
            raise ToolchainError(str(error), tool="speechport", op=getattr(error, "op_type", None)) from None

    def make_state(self) -> dict[str, np.ndarray]:
        return self._program.make_state()

    def predict(self, feeds: dict[str, np.ndarray], state: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        return self._program.run(feeds, state)

    @staticmethod
    def read(state: dict[str, np.ndarray], name: str) -> np.ndarray:
        return state[name].astype(np.float32)

    @staticmethod
    def write(state: dict[str, np.ndarray], name: str, value: np.ndarray) -> None:
        state[name][...] = value


class _CoreMl:
    """Core ML itself (macOS only)."""

    def __init__(self, package: Path, compute_units: str) -> None:
        import coremltools as ct

        self._model = ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, compute_units))

    def make_state(self):
        return self._model.make_state()

    def predict(self, feeds: dict[str, np.ndarray], state) -> dict[str, np.ndarray]:
        results = self._model.predict(feeds, state=state) if state is not None else self._model.predict(feeds)
        return {k: np.asarray(v, dtype=np.float32) for k, v in results.items()}

    @staticmethod
    def read(state, name: str) -> np.ndarray:
        return np.asarray(state.read_state(name), dtype=np.float32)

    @staticmethod
    def write(state, name: str, value: np.ndarray) -> None:
        state.write_state(name, value.astype(np.float16))


def on_apple_runtime() -> bool:
    return platform.system() == "Darwin"


class CoreMlSession(StreamingSession):
    def __init__(self, artifact_dir: Path, threads: int = 1) -> None:
        from pipeline.contract import read_contract

        contract = read_contract(Path(artifact_dir))
        package = Path(artifact_dir) / contract.artifact
        self._runtime = _CoreMl(package, contract.runtime.get("compute_units", "ALL")) if on_apple_runtime() else _Interpreted(package)
        self._in_model = contract.state_in_model
        self._buffers = {s.input: contract.bindings[s.input].name for s in contract.stream.states}
        self._model_state = None
        super().__init__(artifact_dir, threads)

    def reset(self) -> None:
        super().reset()
        if self._in_model:
            self._model_state = self._fresh_state(self.state)

    def _fresh_state(self, values: dict[str, np.ndarray]):
        """A new model state holding `values` (the `init` values on reset), as the contract tells an app to make one."""
        state = self._runtime.make_state()
        for s in self.spec.states:
            self._runtime.write(state, self._buffers[s.input], values[s.input])
        return state

    def advance(self, chunk: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if not self._in_model:
            return super().advance(chunk)
        feeds = {**chunk, **self.state}
        results = self._predict(chunk, self._model_state)
        for s in self.spec.states:
            self.state[s.input] = results[s.output]
        return feeds, results

    def call(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._in_model:
            return super().call(feeds)
        return self._predict(feeds, self._fresh_state(feeds))

    def _predict(self, feeds: dict[str, np.ndarray], state) -> dict[str, np.ndarray]:
        bindings = self.contract.bindings
        raw = self._runtime.predict({bindings[n].name: np.asarray(feeds[n], dtype=np.float32) for n in (i.name for i in self.spec.inputs)}, state)
        results = {o.name: raw[bindings[o.name].name] for o in self.spec.outputs}
        for s in self.spec.states:
            results[s.output] = self._runtime.read(state, self._buffers[s.input])
        return results

    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runtime.predict(feeds, None)
