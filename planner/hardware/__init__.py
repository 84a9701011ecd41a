"""Devices as data: HardwareProfile, the shipped profiles, and the profiler."""

from planner.hardware.profile import (
    HardwareProfile,
    load_profile,
    measured_profile_names,
    measured_profiles,
    profile_from_dict,
    shipped_profile_names,
    shipped_profiles,
)

__all__ = [
    "HardwareProfile",
    "load_profile",
    "measured_profile_names",
    "measured_profiles",
    "profile_from_dict",
    "shipped_profile_names",
    "shipped_profiles",
    "profile_device",
]


def profile_device(*args, **kwargs):
    """Measure a device into a HardwareProfile (lazy: imports torch only when called); see
    planner.hardware.measure.profile_device for the options.

    Raises:
        DeviceError: an unknown device, or a GPU that is not there.
    """
    from planner.hardware.measure import profile_device as _profile_device

    return _profile_device(*args, **kwargs)
