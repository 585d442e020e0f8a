"""Target manifests: what to build, for which model, verified against what.

Relative paths in a manifest resolve against the manifest's own directory, so a manifest and
the model it names may live anywhere (that is how a user brings their own model).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator, model_validator

from pipeline.errors import UserError
from pipeline.quant.options import QuantizationOptions
from pipeline.spec import ChunkLength, StreamSpec, format_ms
from pipeline.verify.gates import Tolerance

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(Strict):
    factory: str = Field(
        description="'package.module:callable' returning the streaming nn.Module; importable from the repo, "
        "`python_path` or PYTHONPATH.",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")
    checkpoint: Path = Field(description="Weights: .safetensors, or a state dict loadable with torch.load(weights_only=True).")
    python_path: tuple[Path, ...] = Field((), description="Extra directories put on sys.path before importing the factory.")


class SpeechData(Strict):
    """Where speech comes from: the project's corpus layout, or a user's own audio files."""

    corpus: Path | None = Field(None, description="Corpus directory holding <split>/index.json and its audio (see models/corpus).")
    audio: Path | None = Field(
        None,
        description="Instead of `corpus`: a directory of WAV/FLAC files (searched recursively, streamed in name order) or "
        "a glob; any sample rate, channels averaged, resampled to 16 kHz.",
    )
    transcripts: Path | None = Field(
        None,
        description="With `audio`: a TSV of `file<TAB>text` lines (file relative to the audio directory, or its stem; "
        "optional header `file<TAB>text`). Files without a line have no ground truth.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "SpeechData":
        if (self.corpus is None) == (self.audio is None):
            found = "both" if self.corpus is not None else "neither"
            raise ValueError(f"give exactly one of `corpus` (with `split`) and `audio` (with optional `transcripts`), found {found}")
        if self.audio is not None and "split" in self.model_fields_set:
            raise ValueError("`split` names a split of a `corpus`; `audio` files have none (remove `split`)")
        if self.corpus is not None and self.transcripts is not None:
            raise ValueError("`transcripts` goes with `audio`; a corpus split's transcripts are in its index.json")
        return self


class VerificationData(SpeechData):
    split: str = Field("verification", description="Corpus split streamed back to back through every artifact.")
    max_seconds: float | None = Field(None, gt=0, description="Stream only this much audio (None: all of it).")
    teacher_steps: int = Field(
        200, gt=0, description="Consecutive calls in each of the three teacher-forced windows (fewer for a runtime whose calls are slow, e.g. a simulator)."
    )
    noisy: bool = Field(
        True,
        description="Also stream a seeded noisy, reverberant copy of the verification speech (pipeline/audio/augment.py) through "
        "every artifact and the reference; a variant passes only if it passes on both.",
    )


class CalibrationData(SpeechData):
    split: str = Field("calibration", description="Corpus split the reference streams to record (chunk, state) samples.")
    max_samples: int = Field(2000, gt=0, description="Calibration samples kept, evenly spaced over all the streams (clean and augmented).")
    augmented_copies: int = Field(
        2,
        ge=0,
        description="Calibration copies of the fit part streamed after it, each speed-, room-, noise- and gain-changed "
        "(pipeline/audio/augment.py) and each from the initial state; 0: clean speech only.",
    )
    held_out_every: int = Field(
        4,
        ge=2,
        description="One utterance in this many (the last of each run of held_out_every) is held out of calibration, "
        "for judging a quantization on speech it was not calibrated on; calibration streams the others.",
    )


class Budgets(Strict):
    max_size_mb: float = Field(50.0, gt=0, description="Largest artifact file allowed, in MB (10^6 bytes).")
    max_rtf: float = Field(0.5, gt=0, description="Largest real-time factor allowed (processing / audio time, 1 thread).")


class Manifest(Strict):
    name: str = Field(description="Target name; names the output directory.", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = Field("", description="Free text shown in reports.")
    model: ModelRef = Field(description="The streaming model to export.")
    io: StreamSpec | None = Field(
        None,
        description="Streaming I/O. Omit to take the model's own `streaming_spec(chunk_ms)` (or "
        "`streaming_spec(chunk_samples=...)`); if given, it is checked.",
    )
    chunk_ms: tuple[int, ...] | None = Field(
        None,
        min_length=1,
        description="Chunk lengths to build and verify, in ms; variants are named `@<ms>ms`. Without `io`, whole 10 ms "
        "frame hops. List this or `chunk_samples`, not both; neither: io's chunk length, or 20 ms without io.",
    )
    chunk_samples: tuple[int, ...] | None = Field(
        None,
        min_length=1,
        description="Chunk lengths to build and verify, in samples (any positive count, e.g. 512 for a raw-PCM model; "
        "whole hops for a log-mel frontend); variants are named `@<n>smp`. The model takes them through "
        "`streaming_spec(chunk_samples=...)` or `io.chunk_samples`.",
    )
    backends: dict[str, tuple[str, ...]] = Field(
        description="Backend -> precisions to build, e.g. {litert: [fp32, int8]}; backends and their precisions "
        "are those of the registry (pipeline/backends).",
        min_length=1,
    )
    verification: VerificationData = Field(description="Speech streamed through every artifact.")
    calibration: CalibrationData | None = Field(None, description="Speech recorded for INT8 calibration.")
    tolerances: dict[str, Tolerance] = Field(
        default_factory=dict,
        description="Overrides of the default tolerances, keyed by precision ('int8': every backend's int8) or by "
        "'backend.precision' ('litert.int8'), which wins. Removing a default bound needs a reason in `waived`.",
    )
    budgets: Budgets = Field(default_factory=Budgets, description="Size and speed limits per artifact.")
    quantization: QuantizationOptions = Field(
        default_factory=QuantizationOptions, description="The recipe search for quantized variants: its fidelity goal and budget."
    )

    @field_validator("chunk_ms")
    @classmethod
    def _whole_frames(cls, value: tuple[int, ...] | None, info: ValidationInfo) -> tuple[int, ...] | None:
        if value is None:
            return value
        for ms in value:
            if ms <= 0:
                raise ValueError(f"chunk length {ms} ms is not positive")
            # without io the frontend is not known before the model is built: hold chunk_ms to the 10 ms hop of the
            # log-mel frontend (with io, its own frontend judges it); any other length is listed in samples
            if info.data.get("io") is None and ms % 10:
                raise ValueError(
                    f"chunk length {ms} ms is not a positive multiple of the 10 ms frame hop "
                    f"(a raw-PCM model takes any length as chunk_samples, e.g. chunk_samples: [{16 * ms}])"
                )
        if len(set(value)) != len(value):
            raise ValueError(f"chunk lengths repeat: {list(value)}")
        return value

    @field_validator("chunk_samples")
    @classmethod
    def _positive_samples(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return value
        for samples in value:
            if samples <= 0:
                raise ValueError(f"chunk length {samples} samples is not positive")
        if len(set(value)) != len(value):
            raise ValueError(f"chunk lengths repeat: {list(value)}")
        return value

    @field_validator("backends")
    @classmethod
    def _registered(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        from pipeline.backends import REGISTRY, get_backend, unknown_backend_message

        for backend, precisions in value.items():
            if backend not in REGISTRY:
                raise ValueError(unknown_backend_message(backend))
            if not precisions:
                raise ValueError(f"backend {backend!r} lists no precision")
            known = get_backend(backend).precision_names
            unsupported = [p for p in precisions if p not in known]
            if unsupported:
                raise ValueError(f"backend {backend!r} cannot build {unsupported}; it builds {known}")
            if len(set(precisions)) != len(precisions):
                raise ValueError(f"backend {backend!r} lists a precision twice: {list(precisions)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        from pipeline.backends import get_backend

        if self.chunk_ms is not None and self.chunk_samples is not None:
            raise ValueError(
                f"chunk_ms {list(self.chunk_ms)} and chunk_samples {list(self.chunk_samples)} are both listed: "
                "list the chunk lengths in one unit"
            )
        if self.io is not None:
            io = self.io
            if self.chunk_ms is not None and [float(ms) for ms in self.chunk_ms] != [io.chunk_ms]:
                raise ValueError(
                    f"chunk_ms {list(self.chunk_ms)} disagrees with io's chunk of {io.chunk_samples} samples "
                    f"({format_ms(io.chunk_ms)} ms): an explicit io describes exactly one chunk length"
                )
            if self.chunk_samples is not None and self.chunk_samples != (io.chunk_samples,):
                raise ValueError(
                    f"chunk_samples {list(self.chunk_samples)} disagrees with io.chunk_samples {io.chunk_samples}: "
                    "an explicit io describes exactly one chunk length"
                )
        calibrated = sorted(
            f"{b}.{p}" for b, ps in self.backends.items() for p in ps if get_backend(b).precision(p).calibrated
        )
        if calibrated and self.calibration is None:
            raise ValueError(f"precisions {calibrated} need a `calibration` section (real speech to calibrate on)")
        listed = {p for ps in self.backends.values() for p in ps} | {f"{b}.{p}" for b, ps in self.backends.items() for p in ps}
        unknown = sorted(set(self.tolerances) - listed)
        if unknown:
            raise ValueError(f"tolerances for {unknown}, which this manifest does not build; it builds {sorted(listed)}")
        return self

    @property
    def chunks(self) -> tuple[ChunkLength, ...]:
        """The chunk lengths to build, each in the unit the manifest lists it (which names the variants)."""
        if self.chunk_samples is not None:
            return tuple(ChunkLength(unit="samples", value=n) for n in self.chunk_samples)
        if self.chunk_ms is not None:
            return tuple(ChunkLength(unit="ms", value=ms) for ms in self.chunk_ms)
        if self.io is not None:
            ms = self.io.chunk_ms
            if ms.is_integer():
                return (ChunkLength(unit="ms", value=int(ms)),)
            return (ChunkLength(unit="samples", value=self.io.chunk_samples),)
        return (ChunkLength(unit="ms", value=20),)

    def tolerance_override(self, backend: str, precision: str) -> Tolerance | None:
        """The manifest's own bounds for one variant: 'precision' entries, then 'backend.precision' ones on top."""
        generic, specific = self.tolerances.get(precision), self.tolerances.get(f"{backend}.{precision}")
        if generic is None or specific is None:
            return specific or generic
        return generic.merged(specific)

    def backend_options(self, backend: str) -> Any:
        """The manifest section named after the backend (its registered options model), or None if it has none."""
        return getattr(self, backend, None)


@lru_cache(maxsize=None)
def manifest_model() -> type[Manifest]:
    """Manifest plus one optional section per registered backend with options, named after it."""
    from pipeline.backends import get_backend, known_backends

    sections: dict[str, Any] = {}
    for name in known_backends():
        options = get_backend(name).options
        if options is not None:
            sections[name] = (options, Field(default_factory=options, description=f"Options of the {name} backend."))
    return create_model("Manifest", __base__=Manifest, **sections)


def _resolve(manifest: Manifest, base: Path) -> Manifest:
    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    model = manifest.model.model_copy(
        update={"checkpoint": absolute(manifest.model.checkpoint), "python_path": tuple(map(absolute, manifest.model.python_path))}
    )

    def located(data: SpeechData) -> SpeechData:
        paths = {name: absolute(getattr(data, name)) for name in ("corpus", "audio", "transcripts") if getattr(data, name) is not None}
        return data.model_copy(update=paths)

    update: dict[str, Any] = {"model": model, "verification": located(manifest.verification)}
    if manifest.calibration is not None:
        update["calibration"] = located(manifest.calibration)
    return manifest.model_copy(update=update)


def _unwrap(annotation: Any) -> Any:
    """X | None, Annotated[...] -> the part that has fields or items."""
    from typing import Annotated, Union, get_args, get_origin

    while get_origin(annotation) in (Union, Annotated) or type(annotation).__name__ == "UnionType":
        options = [a for a in get_args(annotation) if a is not type(None)]
        annotation = options[0] if options else annotation
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
    return annotation


def _field_names(model: type[BaseModel], location: tuple) -> list[str]:
    """Valid field names at `location` (for 'did you mean'), walking models, dicts and lists."""
    from typing import get_args, get_origin

    current: Any = model
    for part in location[:-1]:
        current = _unwrap(current)
        if get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) in (tuple, list):
            current = get_args(current)[0]
        elif isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid manifest ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''})"]
    for error in exc.errors():
        location = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in ("logmel", "pcm", "ctc_greedy", "decision")))
        field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in location).replace(".[", "[")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden" and location:
            close = difflib.get_close_matches(str(location[-1]), _field_names(manifest_model(), location), n=1)
            message = "unknown field" + (f"; did you mean {close[0]!r}?" if close else "")
        elif error["type"] == "missing":
            message = "required field is missing"
        elif "input" in error and error["type"] not in ("value_error",):
            message += f" (got {error['input']!r})"
        lines.append(f"  {field or '<top level>'}: {message}")
    return "\n".join(lines)


def load_manifest(path: str | Path) -> Manifest:
    """Read, validate and resolve a manifest; every problem is a UserError naming the file and field."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError("manifest not found", where=str(path), hint="pass a path like targets/android.yaml")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"not valid YAML: {exc}", where=str(path)) from None
    if not isinstance(document, dict):
        raise UserError(f"expected a mapping of fields at the top level, got {type(document).__name__}", where=str(path))
    try:
        manifest = manifest_model().model_validate(document)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, str(path))) from None
    manifest = _resolve(manifest, path.parent.resolve())
    if not manifest.model.checkpoint.is_file():
        raise UserError(f"checkpoint file not found: {manifest.model.checkpoint}", where=f"{path}: model.checkpoint")
    for field, data in (("verification", manifest.verification), ("calibration", manifest.calibration)):
        if data is not None and data.corpus is not None and not (data.corpus / data.split / "index.json").is_file():
            raise UserError(
                f"no corpus split at {data.corpus / data.split} (expected index.json there)",
                where=f"{path}: {field}.corpus",
                hint="run `make corpus` or fix the path (relative paths are from the manifest's directory)",
            )
        if data is not None and data.audio is not None:
            _check_audio_section(data, f"{path}: {field}")
    return manifest


def _check_audio_section(data: SpeechData, where: str) -> None:
    """The audio files and transcripts exist; what is wrong inside them is found when planning, naming the file."""
    from pipeline.audio.user_audio import find_audio_files

    try:
        find_audio_files(data.audio)
    except UserError as exc:
        raise UserError(exc.message, where=f"{where}.audio", hint="relative paths are from the manifest's directory") from None
    if data.transcripts is not None and not data.transcripts.is_file():
        raise UserError(f"transcripts file {data.transcripts} not found", where=f"{where}.transcripts",
                        hint="relative paths are from the manifest's directory")
