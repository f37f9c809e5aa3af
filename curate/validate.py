"""Checks of numeric settings, shared by every stage's config: a bad value stops in one line that names
the option, the rule and the value (`--seed must be 0 or more, got -1`)."""

from __future__ import annotations

import math

from curate.errors import CurateError


def check(ok: bool, option: str, rule: str, value: object) -> None:
    if not ok:
        raise CurateError(f"{option} must be {rule}, got {value}")


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0  # False for nan and inf: `nan > 0` alone is False too


def non_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def fraction(value: float) -> bool:
    return 0 <= value <= 1  # False for nan
