"""Bounded settings: a default and a meaningful range, declared once on the engine's dataclasses.

Node widgets (min/max), command-line validation and the bench all read them from there, so a
default or a limit is never written twice.
"""

from __future__ import annotations

from dataclasses import Field, field, fields
from typing import Any


def bounded(default: Any, low: float, high: float) -> Any:
    """A dataclass field with ``default`` whose values must lie in ``[low, high]``."""
    return field(default=default, metadata={"range": (low, high)})


def value_range(settings_type: type, name: str) -> tuple[float, float]:
    """The ``(low, high)`` range declared for field ``name`` of a settings dataclass."""
    found: dict[str, Field] = {f.name: f for f in fields(settings_type)}
    if name not in found or "range" not in found[name].metadata:
        raise KeyError(f"{settings_type.__name__}.{name} declares no range")
    return found[name].metadata["range"]


def check_ranges(settings: Any) -> None:
    """Raise ValueError naming the first field of ``settings`` that lies outside its declared range."""
    for declared in fields(settings):
        bounds = declared.metadata.get("range")
        value = getattr(settings, declared.name)
        if bounds is not None and value is not None and not bounds[0] <= value <= bounds[1]:
            low, high = (_shown(bound) for bound in bounds)
            raise ValueError(f"{declared.name} must be in {low}..{high}, got {_shown(value)}")


def _shown(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"
