"""User-facing errors: one family, printed by the CLI in one line."""


class CurateError(Exception):
    """An error the user can fix; the CLI prints its message on one line and exits non-zero."""
