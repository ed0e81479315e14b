"""How a task's failure is told on the wire, the same for every engine: the
exception as ``Type: text`` and its traceback. Neither ever raises: an
exception whose ``str()`` raises is still reported."""

from __future__ import annotations

import traceback
from typing import Any


def exception_text(exc: Any) -> str:
    """``ValueError: bad input`` (the type alone when the text is empty)."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure
        text = "<unprintable>"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def traceback_text(exc: BaseException) -> str | None:
    """The formatted traceback, or None when it cannot be formatted."""
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # noqa: BLE001
        return None
