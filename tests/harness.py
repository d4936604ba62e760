"""Builders shared by the integration tests: a scanner's folders, its TOML config, real Services."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE_SHEET = """Include in Name?,REQUIRED,REQUIRED,REQUIRED,REQUIRED,,,
Barcode,Study,Experiment,Panel,Scanner,Scan Date,Rescan Requested,Notes
620995,Prec01,Run 2,P1,Cardinal,,,
645750,Prec01,Run 2,P1,Cardinal,,,
317335,Prec01,Run 2,P1,Cardinal,,,
407871,Prec01,Run 2,P1,Cardinal,,,
465551,Prec01,Run 2,P1,Cardinal,,,
754788,Prec01,Run 2,P1,Cardinal,,,
545891,Prec01,Run 3,P2,Raven,,yes,blurry on first scan
"""


@dataclass
class Folders:
    """Where ``write_config`` puts one scanner's folders under ``base``; tests' site objects extend it."""

    base: Path

    @property
    def watch(self) -> Path:
        return self.base / "scanner"

    @property
    def storage(self) -> Path:
        return self.base / "storage"

    @property
    def quarantine(self) -> Path:
        return self.watch / ".quarantine"

    @property
    def sheet(self) -> Path:
        return self.base / "sheet.csv"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v)
    return (
        "'" + s + "'"
        if "'" not in s and "\n" not in s
        else '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    )


def dump_toml(data: dict[str, dict[str, Any]]) -> str:
    out = []
    for section, values in data.items():
        out.append(f"[{section}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        out.append("")
    return "\n".join(out)


def write_config(
    base: Path, *, name: str = "Cardinal", sheet: str = SAMPLE_SHEET, **sections: dict[str, Any]
) -> Path:
    """Folders under ``base`` (scanner/, storage/, state/) and a TOML config; returns its path.
    Keyword arguments are sections whose keys override the defaults,
    e.g. ``scanner={"settle_seconds": 1}``."""
    at = Folders(base)
    base.mkdir(parents=True, exist_ok=True)
    at.watch.mkdir(exist_ok=True)
    at.storage.mkdir(exist_ok=True)
    at.sheet.write_text(sheet, encoding="utf-8")
    data: dict[str, dict[str, Any]] = {
        "scanner": {
            "name": name,
            "watch": str(at.watch),
            "settle_seconds": 0.5,
            "rescan_seconds": 5,
            "max_parallel": 2,
            "allow_root": True,
            "retry_seconds": 1,
        },
        "storage": {"root": str(at.storage), "layout": "{Study}/{Experiment}", "reserve_bytes": 0},
        "sheet": {"csv": str(at.sheet), "recheck_seconds": 1},
        "journal": {"path": str(base / "state" / f"{name.lower()}.sqlite")},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = base / f"{name.lower()}.toml"
    path.write_text(dump_toml(data), encoding="utf-8")
    return path


def make_agent(config_path: Path) -> Any:
    """The agent's ``Services``, built by ``bootstrap`` from the config at ``config_path``."""
    from scanner_agent.config import load_config
    from scanner_agent.service.bootstrap import bootstrap

    return bootstrap(load_config(config_path))


def process(agent: Any, *paths: Path) -> list[Any]:
    """Record each scan as ready and run its flow (the same path the daemon takes); returns the rows."""
    from scanner_agent.core.states import ScanState
    from scanner_agent.orchestration.runs import run_scan
    from scanner_agent.scanunit import ScanUnit

    ids = []
    for p in paths:
        unit = ScanUnit.from_path(p)
        fp = unit.fingerprint()
        rec, _new = agent.journal.record_ready(str(unit.primary), fp.total_size, fp.newest_mtime_ns)
        if rec.state in (ScanState.HELD, ScanState.FAILED):
            rec = agent.journal.transition(rec.id, ScanState.READY, reason="test", expect=(rec.state,))
        ids.append(rec.id)

    async def go() -> None:
        for i in ids:
            await run_scan(agent, i)

    asyncio.run(go())
    return [agent.journal.get(i) for i in ids]
