"""Serving engines as data: what each can express and which versions its exporter knows.

The table lives in profiles/engines.yaml; this module reads it and answers three
questions: is a name an engine, is a version inside the known range, and can the engine
run a given decoding set-up (and if not, why not).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from packaging.version import InvalidVersion, Version

from planner._yaml import read_yaml
from planner.errors import InputError, NotFoundError, near_matches
from planner.plan.schema import Decoding

ENGINES_FILE = Path(__file__).resolve().parents[3] / "profiles" / "engines.yaml"

# Why a method cannot be served, for the methods no serving engine has.
_NEVER_SERVED = {
    "layer_skip": "no serving engine has layer skipping",
    "s3d": "no serving engine has S3D drafting",
    "early_exit": "it has no early-exit self-drafting for an unmodified checkpoint",
}


@dataclass(frozen=True)
class EngineInfo:
    name: str  # key: vllm, sglang, trtllm, hf, llamacpp
    display: str
    version_min: str | None  # None: range not pinned
    version_max: str | None
    methods: tuple[str, ...]
    quants: tuple[str, ...]
    schedule: bool  # takes a per-batch-size draft-length table
    features: dict[str, str]  # feature -> first version that has it
    fields: tuple[str, ...]  # every name the exporter may write
    sources: tuple[str, ...]

    @property
    def version_range(self) -> str:
        if self.version_min is None:
            return f"{self.display} (version range not pinned)"
        return f"{self.display} {self.version_min} to {self.version_max}"

    def has_feature(self, feature: str, version: str | None) -> bool:
        """Whether `version` (None: the newest known) has a feature newer than the range start."""
        first = self.features.get(feature)
        if first is None:
            return True
        return Version(version or self.version_max) >= Version(first)

    def cannot_run(self, decoding: Decoding) -> str | None:
        """Why this engine cannot run `decoding`, or None when it can."""
        if decoding.method not in self.methods:
            why = _NEVER_SERVED.get(decoding.method, "it has no such method")
            return f"{self.display} cannot run {decoding.method}: {why}"
        if decoding.quant not in self.quants:
            return f"{self.display} cannot apply {decoding.quant} weight quantization to the target"
        return None


def _info(name: str, row: dict) -> EngineInfo:
    versions = row["versions"] or {"min": None, "max": None}
    return EngineInfo(
        name=name,
        display=row["display"],
        version_min=versions["min"],
        version_max=versions["max"],
        methods=tuple(row["methods"]),
        quants=tuple(row["quants"]),
        schedule=bool(row["schedule"]),
        features=dict(row["features"]),
        fields=tuple(row["fields"]),
        sources=tuple(row["sources"]),
    )


@lru_cache(maxsize=1)
def _table() -> dict[str, EngineInfo]:
    data = read_yaml(ENGINES_FILE)
    return {name: _info(name, row) for name, row in data.items()}


def engine_names() -> list[str]:
    """The engines specplan exports to, as profiles/engines.yaml lists them."""
    return list(_table())


def engine_info(name: str) -> EngineInfo:
    """What engine `name` can run and which versions its exporter knows.

    Raises:
        NotFoundError: an unknown engine (with the near names).
    """
    table = _table()
    if name not in table:
        raise NotFoundError(f"unknown engine '{name}'{near_matches(name, table)} (engines: {', '.join(table)})")
    return table[name]


def check_version(info: EngineInfo, version: str | None) -> str | None:
    """The version to write for (None: the whole known range).

    Raises:
        InputError: `version` is not a version number, is outside the known range, or the
            engine's build numbers are not pinned.
    """
    if version is None:
        return None
    if info.version_min is None:
        raise InputError(
            f"`engine_version` {version}: specplan has not pinned {info.display} build numbers; "
            "leave `engine_version` out (the header names the flags' source)"
        )
    try:
        asked = Version(version)
    except InvalidVersion:
        raise InputError(f"`engine_version` {version!r} is not a version number") from None
    if not Version(info.version_min) <= asked <= Version(info.version_max):
        raise InputError(
            f"`engine_version` {version}: the {info.display} exporter knows "
            f"{info.version_min} to {info.version_max} only"
        )
    return version
