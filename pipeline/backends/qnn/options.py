"""The manifest's `qnn:` section: which Snapdragon SoCs get a QNN context binary, and quantization choices."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# QNN's soc_model ids and the Hexagon (HTP) generation of each SoC. The EP accepts an htp_arch that contradicts
# the soc_model and silently builds for the soc_model's (measured: v73 with soc 57 wrote the v75 binary), so the
# pair is checked here against the SoC's own generation.
SOCS: dict[str, tuple[int, str]] = {
    "SM8350": (30, "v68"),  # Snapdragon 888
    "SM8450": (36, "v69"),  # Snapdragon 8 Gen 1
    "SM8550": (43, "v73"),  # Snapdragon 8 Gen 2
    "SM8650": (57, "v75"),  # Snapdragon 8 Gen 3
    "SM8750": (69, "v79"),  # Snapdragon 8 Elite
}


class Soc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description=f"Snapdragon SoC part number, one of {', '.join(SOCS)}.")
    soc_model: int = Field(description="QNN's soc_model id of that SoC (SM8550: 43, SM8650: 57).")
    htp_arch: Literal["v68", "v69", "v73", "v75", "v79"] = Field(description="Hexagon tensor processor generation of that SoC.")

    @model_validator(mode="after")
    def _known_pair(self) -> "Soc":
        if self.name not in SOCS:
            raise ValueError(f"unknown SoC {self.name!r}; known: {', '.join(f'{n} (soc_model {m}, {a})' for n, (m, a) in SOCS.items())}")
        expected = SOCS[self.name]
        if (self.soc_model, self.htp_arch) != expected:
            raise ValueError(
                f"{self.name} is soc_model {expected[0]} with HTP {expected[1]}, not soc_model {self.soc_model} with {self.htp_arch}"
            )
        return self

    @property
    def label(self) -> str:
        return f"{self.htp_arch}-{self.name}"


DEFAULT_SOCS = (Soc(name="SM8550", soc_model=43, htp_arch="v73"), Soc(name="SM8650", soc_model=57, htp_arch="v75"))


class QnnOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    socs: tuple[Soc, ...] = Field(
        DEFAULT_SOCS,
        min_length=1,
        description="SoCs to write an EP-context model and QNN context binary for (each a soc_model id and its HTP "
        "generation); the first is the one verification streams on. Default: SM8550 (v73) and SM8650 (v75).",
    )
    per_channel: bool = Field(
        True, description="Per-channel weight scales where HTP takes them (Conv; QNN has no per-channel MatMul/Gemm)."
    )
    sixteen_bit_states: dict[Literal["a8w8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="a8w8 only: state inputs (e.g. c_in) whose recurrence is quantized to 16 bits inside the 8-bit graph: "
        "every op on a path from the state input to its state output, and every op reading such a value (tanh(c)).",
    )
    sixteen_bit_frontends: dict[Literal["a8w8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="a8w8 only: chunk inputs (raw PCM) quantized to 16 bits with their front end (every op on a path to "
        "the spectrum's log, found by structure).",
    )
    sixteen_bit: dict[Literal["a8w8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="a8w8 only: ONNX node names or graph inputs (or shell-style patterns of them, e.g. node_Conv_*) whose "
        "values are quantized to 16 bits, e.g. a raw-PCM front end whose values no 8-bit grid holds.",
    )
    sixteen_bit_weights: dict[Literal["a16w8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="a16w8 only: ONNX node names (or shell-style patterns) whose weights are quantized to 16 bits "
        "(symmetric int16, so HTP runs the op as a16w16), e.g. the output layer whose 8-bit weights flip near-tied logits.",
    )
    calibration_samples: int | None = Field(
        None, gt=0, description="Recorded (chunk, state) pairs to calibrate on (evenly spaced); None: every recorded pair."
    )
    state_headroom: float = Field(
        2.0,
        ge=1.0,
        description="Each 16-bit state pair's calibrated range (a16w8's, and a8w8's kept recurrences') is widened by this "
        "factor on each side away from zero, since a state's range on speech calibration never heard outgrows the "
        "recorded one (measured up to 1.71x) and HTP feeds a clipped state back; 1: the recorded range. 8-bit states "
        "keep their range.",
    )

    @model_validator(mode="after")
    def _distinct(self) -> "QnnOptions":
        names = [s.name for s in self.socs]
        if len(set(names)) != len(names):
            raise ValueError(f"socs lists a SoC twice: {names}")
        return self
