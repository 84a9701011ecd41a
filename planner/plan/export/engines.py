"""Serving engines as data: what each can express and which versions its exporter knows.

The table lives in planner/profiles/engines.yaml; this module reads it and answers four
questions: is a name an engine, is a version inside a known range, which field table
(names and their sources) applies to that version, and can the engine run a given
decoding set-up (and if not, why not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from packaging.version import InvalidVersion, Version

from planner._yaml import read_yaml
from planner.errors import InputError, NotFoundError, near_matches
from planner.perf.cost import EngineCost
from planner.perf.memory import EngineMemory, ReserveTier
from planner.plan.schema import Decoding
from planner.profiles import PROFILES_DIR

ENGINES_FILE = PROFILES_DIR / "engines.yaml"

# Why a method cannot be served, for the methods no serving engine has.
_NEVER_SERVED = {
    "layer_skip": "no serving engine has layer skipping",
    "s3d": "no serving engine has S3D drafting",
    "early_exit": "it has no early-exit self-drafting for an unmodified checkpoint",
    "medusa": "it has no Medusa heads",
}


@dataclass(frozen=True)
class FieldTable:
    """The names an exporter may write for one range of engine versions, and where they were read."""

    version_min: str | None  # None: build numbers not pinned
    version_max: str | None
    fields: tuple[str, ...]
    sources: tuple[str, ...]
    draft_len_schedule: str | None = None  # TensorRT-LLM: how its keys are read (lower_bound, upper_bound)

    def covers(self, version: str) -> bool:
        return Version(self.version_min) <= Version(version) <= Version(self.version_max)

    def range_text(self, display: str) -> str:
        if self.version_min is None:
            return f"{display} (build numbers not pinned)"
        return f"{display} {self.version_min} to {self.version_max}"


@dataclass(frozen=True)
class EngineInfo:
    name: str  # key: vllm, sglang, trtllm, hf, llamacpp
    display: str
    methods: tuple[str, ...]
    quants: tuple[str, ...]
    schedule: bool  # takes a per-batch-size draft-length table
    features: dict[str, str]  # feature -> first version that has it
    image: str | None  # published container image, {version} to fill; None: none published
    port: int | None  # the engine's default port
    tables: tuple[FieldTable, ...]  # oldest first
    cost: EngineCost = EngineCost()  # what the engine adds to a step (planner.perf.cost)
    memory: EngineMemory | None = None  # how it sets memory aside; None: no policy known
    trees: bool = False  # drafts a tree from a learned head (topk > 1)
    devices: tuple[str, ...] = ("gpu", "cpu")  # the profile kinds it runs on
    schedule_methods: tuple[str, ...] | None = None  # the methods it takes a draft-length table for; None: all
    refusals: dict[str, str] = field(default_factory=dict)  # method -> why it cannot run it (beyond absence)

    @property
    def version_range(self) -> str:
        first, last = self.tables[0], self.tables[-1]
        if first.version_min is None:
            return first.range_text(self.display)
        return f"{self.display} {first.version_min} to {last.version_max}"

    def table(self, version: str | None) -> FieldTable:
        """The table for `version` (checked by check_version); None: the newest."""
        if version is None:
            return self.tables[-1]
        return next(t for t in self.tables if t.covers(version))

    def takes_schedule(self, method: str) -> bool:
        """Whether the engine takes a per-batch-size draft-length table for `method`."""
        return self.schedule and (self.schedule_methods is None or method in self.schedule_methods)

    def has_feature(self, feature: str, version: str | None) -> bool:
        """Whether `version` (None: the newest known) has a feature newer than the range start."""
        first = self.features.get(feature)
        if first is None:
            return True
        return Version(version or self.tables[-1].version_max) >= Version(first)

    def cannot_run(self, decoding: Decoding) -> str | None:
        """Why this engine cannot run `decoding`, or None when it can."""
        if decoding.method not in self.methods:
            why = self.refusals.get(decoding.method) or _NEVER_SERVED.get(decoding.method, "it has no such method")
            return f"{self.display} cannot run {decoding.method}: {why}"
        if decoding.topk > 1 and not self.trees:
            others = ", ".join(e.display for e in _table().values() if e.trees) or "none"
            return (f"{self.display} cannot draft a tree (topk {decoding.topk}): its export drafts a chain from a head "
                    f"(engines that draft trees: {others})")
        if decoding.quant not in self.quants:
            return f"{self.display} cannot apply {decoding.quant} weight quantization to the target"
        if decoding.method == "draft_model" and decoding.draft_quant not in self.quants:
            return f"{self.display} cannot apply {decoding.draft_quant} weight quantization to the draft"
        return None


def _table_of(row: dict) -> FieldTable:
    versions = row["versions"] or {"min": None, "max": None}
    return FieldTable(versions["min"], versions["max"], tuple(row["fields"]), tuple(row["sources"]),
                      row.get("draft_len_schedule"))


def _info(name: str, row: dict) -> EngineInfo:
    return EngineInfo(
        name=name,
        display=row["display"],
        methods=tuple(row["methods"]),
        quants=tuple(row["quants"]),
        schedule=bool(row["schedule"]),
        features=dict(row["features"]),
        image=row["image"],
        port=row["port"],
        tables=tuple(_table_of(t) for t in row["tables"]),
        cost=_cost_of(name, row.get("cost") or {}),
        memory=_memory_of(row.get("memory")),
        trees=bool(row.get("trees", False)),
        devices=tuple(row.get("devices", ("gpu", "cpu"))),
        schedule_methods=tuple(row["schedule_methods"]) if "schedule_methods" in row else None,
        refusals=dict(row.get("refusals") or {}),
    )


def _cost_of(name: str, row: dict) -> EngineCost:
    figures = {k: v for k, v in row.items() if k not in ("execution", "sources")}
    return EngineCost(name=name, graphs=row.get("execution", "graphs") == "graphs", **figures)


def _memory_of(row: dict | None) -> EngineMemory | None:
    if row is None:
        return None
    fields = {k: v for k, v in row.items() if k not in ("sources", "reserve_tiers")}
    return EngineMemory(**fields, reserve_tiers=tuple(ReserveTier(**t) for t in row.get("reserve_tiers", ())))


@lru_cache(maxsize=1)
def _table() -> dict[str, EngineInfo]:
    data = read_yaml(ENGINES_FILE)
    return {name: _info(name, row) for name, row in data.items()}


def engine_names() -> list[str]:
    """The engines specplan exports to, as planner/profiles/engines.yaml lists them."""
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
    """The version to write for (None: the newest table's range); refuses versions no table covers.

    Raises:
        InputError: `version` is not a version number, or no table covers it.
    """
    if version is None:
        return None
    if info.tables[0].version_min is None:
        raise InputError(
            f"`engine_version` {version}: specplan has not pinned {info.display} build numbers; "
            "leave `engine_version` out (the header names the flags' source)"
        )
    try:
        Version(version)
    except InvalidVersion:
        raise InputError(f"`engine_version` {version!r} is not a version number") from None
    if not any(t.covers(version) for t in info.tables):
        known = " and ".join(f"{t.version_min} to {t.version_max}" for t in info.tables)
        raise InputError(f"`engine_version` {version}: the {info.display} exporter knows {known} only")
    return version
