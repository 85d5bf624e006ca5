"""The capability registry: specs from capabilities/*.yaml, checked for coherence, bound to handlers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path

import yaml
from pydantic import ValidationError

from controller.api.capability import CapabilitySpec, RiskLevel
from controller.capabilities.base import Handler
from controller.capabilities.handlers import HANDLERS

SPEC_DIR = Path(__file__).resolve().parents[2] / "capabilities"
TEST_FAMILY = "test.yaml"
ENTRY_POINT_GROUP = "airun.capabilities"
NETWORK_WRITES = {"network.write"}
DESTRUCTIVE = {"fs.delete", "k8s.delete", "data.delete"}


class CapabilitySpecError(ValueError):
    pass


def risk_problems(spec: CapabilitySpec) -> list[str]:
    """The risk consistency rules; each problem names its rule (docs/capabilities.md)."""
    problems = []
    level = spec.risk.level
    effects = set(spec.side_effects)
    if effects and spec.compensation is None and not spec.internal and level.rank < RiskLevel.HIGH.rank:
        problems.append("R1: side effects without compensation must be HIGH risk or above")
    if effects & DESTRUCTIVE and level.rank < RiskLevel.MEDIUM.rank:
        problems.append("R2: destructive side effects must be MEDIUM risk or above")
    if effects & NETWORK_WRITES and level.rank < RiskLevel.MEDIUM.rank:
        problems.append("R3: network writes must be MEDIUM risk or above")
    if not effects and not spec.idempotent:
        problems.append("R4: a capability without side effects must be idempotent")
    if spec.internal and spec.compensation is not None:
        problems.append("R5: an internal (undo) capability has no compensation of its own")
    return problems


class Registry:
    def __init__(self, specs: Iterable[CapabilitySpec], handlers: Mapping[str, Handler]) -> None:
        self._specs = {s.id: s for s in specs}
        self._handlers = dict(handlers)
        problems = []
        for spec in self._specs.values():
            problems += [f"{spec.id}: {p}" for p in risk_problems(spec)]
            if spec.compensation and spec.compensation.capability and spec.compensation.capability not in self._specs:
                problems.append(f"{spec.id}: compensation {spec.compensation.capability!r} is not a capability")
            if spec.id not in self._handlers and spec.http is None:
                problems.append(f"{spec.id}: no handler and no http endpoint")
        if problems:
            raise CapabilitySpecError("incoherent capability specs: " + "; ".join(problems))

    def get(self, capability_id: str) -> CapabilitySpec:
        return self._specs[capability_id]

    def list(self) -> list[CapabilitySpec]:
        return sorted(self._specs.values(), key=lambda s: s.id)

    def specs(self) -> dict[str, CapabilitySpec]:
        return dict(self._specs)

    def handler(self, capability_id: str) -> Handler:
        return self._handlers[capability_id]


def load_file(path: Path) -> list[CapabilitySpec]:
    data = yaml.safe_load(path.read_text()) or {}
    specs = []
    for index, raw in enumerate(data.get("capabilities", [])):
        try:
            specs.append(CapabilitySpec.model_validate(raw))
        except ValidationError as error:
            name = raw.get("id", f"#{index}") if isinstance(raw, dict) else f"#{index}"
            raise CapabilitySpecError(f"{path.name}: capability {name}: {error}") from error
    return specs


def plugins(group: str = ENTRY_POINT_GROUP) -> tuple[list[CapabilitySpec], dict[str, Handler]]:
    """Capabilities from installed packages: each entry point of GROUP names an object (usually a
    module) with SPECS (a list of capability specs as dicts, or the path of a YAML file like those in
    capabilities/) and HANDLERS (capability id -> async handler)."""
    specs: list[CapabilitySpec] = []
    handlers: dict[str, Handler] = {}
    for entry_point in entry_points(group=group):
        plugin = entry_point.load()
        raw = getattr(plugin, "SPECS", [])
        if isinstance(raw, str | Path):
            loaded = load_file(Path(raw))
        else:
            try:
                loaded = [CapabilitySpec.model_validate(item) for item in raw]
            except ValidationError as error:
                raise CapabilitySpecError(f"plugin {entry_point.name}: {error}") from error
        specs += loaded
        handlers.update(getattr(plugin, "HANDLERS", {}))
    return specs, handlers


def load(directory: Path = SPEC_DIR, *, include_test: bool = False, include_plugins: bool = True) -> Registry:
    specs: list[CapabilitySpec] = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name == TEST_FAMILY and not include_test:
            continue
        specs += load_file(path)
    handlers = {k: v for k, v in HANDLERS.items() if any(s.id == k for s in specs)}
    if include_plugins:
        extra_specs, extra_handlers = plugins()
        clashes = sorted({s.id for s in extra_specs} & {s.id for s in specs})
        if clashes:
            raise CapabilitySpecError(f"plugins redefine built-in capabilities: {', '.join(clashes)}")
        specs += extra_specs
        handlers.update(extra_handlers)
    return Registry(specs, handlers)
