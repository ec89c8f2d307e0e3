"""Widget values checked and coerced by their declared type, as ComfyUI's validation does, a bit stricter.

ComfyUI converts a widget value with ``int()``, ``float()``, ``str()`` or ``bool()`` and accepts what
converts. Here a value converts only when nothing is lost: ``true`` is not a step count, ``7.5`` is not an
INT, NaN and infinity are no FLOAT, and ``null`` is no value at all.
"""

from __future__ import annotations

import math
from typing import Any

NUMBER_KINDS = ("INT", "FLOAT")


class Refused(ValueError):
    """The value cannot be read as the input's type; the message says what it is and what is wanted."""


def _describe(value: Any) -> str:
    if value is None:
        return "null (no value)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'list'}"
    return repr(value)


def _number(value: Any, kind: str) -> float | int:
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        raise Refused(f"is {_describe(value)}, not a number")
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind == "FLOAT" or not value.strip().lstrip("+-").isdigit() else int(value)
        except ValueError:
            raise Refused(f"is {_describe(value)}, not a number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise Refused(f"is {value}, not a finite number")
    if kind == "INT":
        if isinstance(value, float):
            if not value.is_integer():
                raise Refused(f"is {value}, not a whole number")
            value = int(value)
        return value
    return float(value)


def coerce(kind: Any, value: Any) -> Any:
    """``value`` as the declared ``kind`` (INT, FLOAT, STRING, BOOLEAN); other kinds pass unchanged.
    Raises ``Refused`` when the value cannot be that type without losing or inventing something."""
    if kind in NUMBER_KINDS:
        return _number(value, kind)
    if kind == "STRING":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return str(value)  # ComfyUI's str(); a number typed into a text box is that text
        raise Refused(f"is {_describe(value)}, not text")
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise Refused(f"is {_describe(value)}, not true or false")
    return value


def range_problem(value: Any, options: dict[str, Any]) -> str | None:
    if "min" in options and value < options["min"]:
        return f"= {value} is below its minimum {options['min']}"
    if "max" in options and value > options["max"]:
        return f"= {value} is above its maximum {options['max']}"
    return None
