"""User-facing errors: one family, printed by the CLI in one line."""


class CurateError(Exception):
    """An error the user can fix; the CLI prints its message on one line and exits non-zero."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a one-line
    error quotes of a library's multi-line message."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
