"""Does a live object carry every field of a desired manifest? Server-side apply decides what
the operator writes; tests ask "is what it asked for in place?", and say where it is not.

A desired manifest is "satisfied" when every field it sets has the same value in the live object;
fields the API server defaults or others own are not compared.
"""

from __future__ import annotations

from typing import Any


def is_subset(desired: Any, actual: Any) -> bool:
    """True when every field set in ``desired`` has the same value in ``actual``.

    Dicts compare key by key; lists must have the same length and match element by element
    (order matters for containers, ports and args); scalars compare equal.
    """
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(
            key in actual and is_subset(value, actual[key]) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (isinstance(actual, list) and len(desired) == len(actual)
                and all(is_subset(d, a) for d, a in zip(desired, actual)))
    return desired == actual


def first_difference(desired: Any, actual: Any, path: str = "") -> str | None:
    """Path and values of the first owned field that differs (for logs and test messages)."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return f"{path or '.'}: want an object, have {actual!r}"
        for key, value in desired.items():
            if key not in actual:
                return f"{path}.{key}: missing (want {value!r})"
            found = first_difference(value, actual[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return f"{path}: want {len(desired)} items, have {actual!r}"
        for i, (d, a) in enumerate(zip(desired, actual)):
            found = first_difference(d, a, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if desired == actual else f"{path}: want {desired!r}, have {actual!r}"
