"""The one base of MoEE's errors that are the user's to fix, not bugs.

A missing or mismatched weights file, a damaged shard, a portrait with no face, an unknown
emotion, a run that diverged: each raises a subclass of :class:`MoEEError` whose message is one
line that says what to do. Every command catches the base and prints ``error: <message>``
instead of a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MoEEError(Exception):
    """An error the user can fix; its message is one line that says how."""


class BadInputError(MoEEError):
    """One animation job's input (portrait, audio, emotion) cannot be used: batch prediction
    skips that job and goes on with the others."""


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (whitespace runs, newlines included, become a space)."""
    return " ".join(str(error).split())


def user_error_within(error: BaseException) -> MoEEError | None:
    """The first :class:`MoEEError` in ``error``'s chain of causes (e.g. one that jsonargparse
    wrapped while building a class), or ``None``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, MoEEError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
