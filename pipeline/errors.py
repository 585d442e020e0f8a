"""Kinds of failure, kept apart: the user's input is wrong, a toolchain broke, or speechport is wrong.

Every error here survives pickling with its attributes intact, because parallel builds raise them
in worker processes and the parent reports them.
"""

from __future__ import annotations

from typing import Any


def _rebuild(cls: type[Exception], args: tuple, kwargs: dict[str, Any], state: dict[str, Any]) -> Exception:
    """Unpickle an error through its own keyword-only constructor, then restore what it looked up."""
    error = cls(*args, **kwargs)
    error.__dict__.update(state)
    return error


class UserError(Exception):
    """Bad input (manifest, model, checkpoint, audio). The CLI prints it and exits 2, no traceback.

    The message names the file, the field or the op, what was expected and what was found.
    """

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.message, self.where, self.hint = message, where, hint
        text = f"{where}: {message}" if where else message
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)

    def __reduce__(self) -> tuple:
        # the default reduce would call __init__(str(self)) and lose where/hint
        state = {k: v for k, v in self.__dict__.items() if k not in ("message", "where", "hint")}
        return _rebuild, (type(self), (self.message,), {"where": self.where, "hint": self.hint}, state)


class VerificationFailed(Exception):
    """An artifact built but does not meet its tolerances or budgets. Exit 1."""

    exit_code = 1


class InternalError(Exception):
    """A broken assumption inside speechport: a bug to report, shown with its traceback."""

    exit_code = 3


def _distribution_version(tool: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(tool)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return "version unknown"


class ToolchainError(Exception):
    """A converter or runtime (tensorflow, onnxruntime, coremltools, ...) failed on valid input. Exit 4.

    It names the variant and stage, the tool with its installed version (the first thing a bug
    report upstream needs) and, when known, the op it choked on.
    """

    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        tool: str,
        stage: str | None = None,
        variant: str | None = None,
        op: str | None = None,
    ) -> None:
        self.message, self.tool, self.stage, self.variant, self.op = message, tool, stage, variant, op
        # looked up now, where the tool ran: the process that reports the error may differ
        self.tool_version = _distribution_version(tool)
        super().__init__(message)

    def __str__(self) -> str:
        where = self.variant or ""
        if self.stage:
            where = f"{where} (stage {self.stage})" if where else f"stage {self.stage}"
        text = f"{self.tool} {self.tool_version} failed: {self.message}"
        if self.op:
            text += f" [op {self.op}]"
        return f"{where}: {text}" if where else text

    def __reduce__(self) -> tuple:
        kwargs = {"tool": self.tool, "stage": self.stage, "variant": self.variant, "op": self.op}
        state = {k: v for k, v in self.__dict__.items() if k not in ("message", *kwargs)}
        return _rebuild, (type(self), (self.message,), kwargs, state)
