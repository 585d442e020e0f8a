"""Two kinds of failure, kept apart: the user's input is wrong, or speechport is."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (manifest, model, checkpoint, audio). The CLI prints it and exits 2, no traceback.

    The message names the file, the field or the op, what was expected and what was found.
    """

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.where, self.hint = where, hint
        text = f"{where}: {message}" if where else message
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


class VerificationFailed(Exception):
    """An artifact built but does not meet its tolerances or budgets. Exit 1."""

    exit_code = 1


class InternalError(Exception):
    """A broken assumption inside speechport: a bug to report, shown with its traceback."""

    exit_code = 3
