"""Parsing of command-line values shared by the commands: comma-separated lists."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from wxscale.errors import WxscaleError


def split_list(text: str, convert: Callable[[str], Any] = str) -> list:
    """'a, b,c' -> [convert('a'), convert('b'), convert('c')]; ValueError when empty or a value does not convert."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError("give at least one value (comma-separated)")
    try:
        return [convert(t) for t in items]
    except ValueError:
        raise ValueError(f"expected comma-separated {getattr(convert, '__name__', 'values')} values") from None


def parse_list(text: str, flag: str, convert: Callable[[str], Any] = str) -> list:
    """:func:`split_list` for a flag read after parsing: the error names the flag."""
    try:
        return split_list(text, convert)
    except ValueError as err:
        raise WxscaleError(f"{flag} {text!r}: {err}") from None


def float_list(text: str) -> list[float]:
    """argparse ``type=`` for comma-separated numbers (argparse names the flag in its error)."""
    try:
        return split_list(text, float)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
