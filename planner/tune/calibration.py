"""A calibration file (NAME.calibration.yaml beside a tuned plan): the hardware profile and
acceptance priors that `tune` fitted to its study's measured trials (planner.tune.fit), for
one model on one device. `plan` and `predict` take it (`--calibration FILE`) in place of a
profile and the shipped priors.

    schema_version: 1
    model: {name, num_layers, hidden_size, vocab_size}    the model the trials decoded
    profile: {...}                                         a HardwareProfile, fitted fields' sources say so
    priors: {METHOD: {ceiling, steepness, midpoint, decay, source}}
    fit: {study, trials, set_ups, context, held_out: [...], error_before, error_after, before: {FIELD: value}}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner._fields import from_mapping, to_plain, versioned_mapping
from planner._yaml import read_yaml, write_yaml_atomic
from planner.errors import InputError, near_matches
from planner.hardware.profile import HardwareProfile, profile_from_dict
from planner.perf.acceptance import Prior
from planner.plan.schema import METHODS

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FittedFor:
    """The model whose trials were fitted: its name and shape."""

    name: str
    num_layers: int
    hidden_size: int
    vocab_size: int


@dataclass(frozen=True)
class HeldOutSetUp:
    """One set-up the fit did not see: its measured speedup and the model's before and after."""

    set_up: str
    measured_speedup: float
    before_speedup: float
    after_speedup: float


@dataclass(frozen=True)
class FitSummary:
    study: str
    trials: int  # measured trials the file's fit read (unquantized targets)
    set_ups: int  # distinct set-ups among them
    context: int  # tokens in the KV cache the predictions assumed
    held_out: tuple[HeldOutSetUp, ...] = ()  # a third of the set-ups, left out of a second fit to test it
    error_before: float | None = None  # mean |predicted / measured speedup - 1| over held_out, before the fit
    error_after: float | None = None  # the same with the constants fitted to the other set-ups
    # the fitted profile fields as they were before the fit (the study's step-calibrated profile)
    before: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Calibration:
    model: FittedFor
    profile: HardwareProfile
    priors: dict[str, Prior]  # the methods the trials measured; the others keep their priors
    fit: FitSummary

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "model": to_plain(self.model), "profile": self.profile.to_dict(),
                "priors": {m: to_plain(p) for m, p in self.priors.items()}, "fit": to_plain(self.fit)}

    def save(self, path) -> None:
        """Write the calibration as YAML to `path`, atomically.

        Raises:
            InputError: `path` cannot be written.
        """
        write_yaml_atomic(path, self.to_dict())


@dataclass(frozen=True)
class _File:
    model: FittedFor
    priors: dict[str, Prior]
    fit: FitSummary


def _check(name: str, path: str, value) -> None:
    if name in ("ceiling", "decay") and not 0 < value <= 1:
        raise InputError(f"{path}: must be above 0 and at most 1, got {value}")
    if name in ("steepness", "error_before", "error_after") and value < 0:
        raise InputError(f"{path}: must not be negative, got {value}")
    if name in ("num_layers", "hidden_size", "vocab_size", "context", "measured_speedup", "before_speedup",
                "after_speedup") and value <= 0:
        raise InputError(f"{path}: must be positive, got {value}")
    if name in ("trials", "set_ups", "before") and value < 0:
        raise InputError(f"{path}: must not be negative, got {value}")


def load_calibration(path) -> Calibration:
    """The calibration in the YAML file `path`, every field checked.

    Raises:
        NotFoundError: no such file.
        InputError: "<path>: <field path>: <why>" for a file that is not UTF-8 YAML, not a
            mapping, of another schema_version, or has a field that is unknown, missing, of the
            wrong type, not finite or out of range (ceiling and decay in (0, 1], steepness not
            negative, the profile's own ranges), or priors for a method that does not exist.
    """
    data = versioned_mapping(read_yaml(path), str(path), what="a calibration", version=SCHEMA_VERSION, required=True,
                             hint="specplan tune writes NAME.calibration.yaml")
    if "profile" not in data:
        raise InputError(f"{path}: profile: missing")
    profile = profile_from_dict(data.pop("profile"), origin=f"{path}: profile")
    try:
        rest = from_mapping(_File, data, check=_check)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    for method in rest.priors:
        if method not in METHODS or method == "autoregressive":
            raise InputError(f"{path}: priors.{method}: no such drafting method{near_matches(method, METHODS)}")
    return Calibration(rest.model, profile, rest.priors, rest.fit)


def calibrated_model(path, spec, profile: HardwareProfile | None = None) -> tuple[HardwareProfile, dict[str, Prior]]:
    """(the fitted profile, the fitted priors) of the calibration in `path`, refused unless it
    was fitted for `spec` (name and shape) and, when a `profile` is given too, on its device.

    Raises:
        NotFoundError, InputError: what load_calibration raises; InputError when the file was
            fitted for another model or on another device.
    """
    c = load_calibration(path)
    m = c.model
    if (m.name, m.num_layers, m.hidden_size, m.vocab_size) != (spec.name, spec.num_layers, spec.hidden_size,
                                                                spec.vocab_size):
        raise InputError(f"{path}: fitted for model {m.name} ({m.num_layers} layers, hidden size {m.hidden_size}, "
                         f"vocabulary {m.vocab_size}), not for {spec.name} ({spec.num_layers} layers, hidden size "
                         f"{spec.hidden_size}, vocabulary {spec.vocab_size})")
    if profile is not None and profile.device_name != c.profile.device_name:
        raise InputError(f"{path}: fitted on {c.profile.device_name}, not on {profile.device_name} ({profile.name})")
    return c.profile, dict(c.priors)


def fitted_source(study: str, trials: int) -> str:
    """The `source` of every fitted figure."""
    return f"fitted by specplan tune to {trials} measured trials of study {study} (planner.tune.fit)"


__all__ = ["Calibration", "FitSummary", "FittedFor", "HeldOutSetUp", "calibrated_model", "fitted_source",
           "load_calibration"]
