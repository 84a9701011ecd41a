"""specplan's error hierarchy. The CLI catches SpecplanError once and prints one line."""

from __future__ import annotations

import difflib

__all__ = [
    "SpecplanError",
    "InputError",
    "NotFoundError",
    "PlanError",
    "BudgetError",
    "DeviceError",
    "MissingDependencyError",
    "SpecplanWarning",
    "near_matches",
]


class SpecplanError(Exception):
    """Base class: anything the user should see as one line, not a traceback."""

    exit_code = 1


class SpecplanWarning(UserWarning):
    """Input that is used as given but may not be what the user meant (a profile file that
    leaves a figure to specplan's default); the CLI prints each as one "note:" line."""


class InputError(SpecplanError):
    """Bad input from the user: arguments, files, names."""

    exit_code = 2


class NotFoundError(InputError):
    """An unknown profile, model card, file or method name."""


class PlanError(InputError):
    """A plan file that does not validate; the message names the field."""


class BudgetError(InputError):
    """Nothing fits the memory budget or the device."""


class DeviceError(InputError):
    """A device that was asked for is not there (e.g. --device cuda without a GPU)."""


class MissingDependencyError(SpecplanError):
    """An optional package is needed; the message names the extra to install."""

    exit_code = 2


def near_matches(name: str, choices, n: int = 3) -> str:
    """' (did you mean: a, b?)' for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=n, cutoff=0.5)
    if not close:
        return ""
    return f" (did you mean: {', '.join(close)}?)"
