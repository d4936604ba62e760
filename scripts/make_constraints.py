"""Write constraints.txt: every distribution pip resolves for the agent (and its test and lint
extras) from pyproject.toml, pinned ``name==version``.

The Prefect server is the same ``prefect`` distribution (with its database drivers), so one set
pins the agent and the server. ``make constraints`` runs this; it asks pip to resolve into nothing
(``pip install --dry-run --ignore-installed --report``), so the venv it runs in is left alone.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import tomllib
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ".[test,lint]"


def resolve() -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--dry-run",
                "--ignore-installed",
                "--report",
                str(report),
                EXTRAS,
            ],
            cwd=ROOT,
            check=True,
        )
        data = json.loads(report.read_text())
    pins = []
    for item in data["install"]:
        meta = item["metadata"]
        if meta["name"].lower() == "scanner-agent":
            continue
        pins.append((meta["name"], meta["version"]))
    return sorted(pins, key=lambda p: p[0].lower())


def conflicts(pyproject: str, constraints: str) -> list[str]:
    """Each way ``constraints`` breaks ``pyproject``'s ranges (dependencies and extras): a pin outside
    a range, a dependency left unpinned, a line that is not ``name==version``. Empty: consistent."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    out = []
    for n, line in enumerate(constraints.splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        name, sep, version = text.partition("==")
        if not sep or not name.strip() or not version.strip():
            out.append(f"constraints.txt line {n}: {line.strip()!r} is not name==version")
            continue
        pins[canonicalize_name(name.strip())] = version.strip()
    project = tomllib.loads(pyproject)["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    for raw in reqs:
        req = Requirement(raw)
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            out.append(f"{req.name}: in pyproject.toml ({raw}) but not pinned in constraints.txt")
        elif not req.specifier.contains(pinned, prereleases=True):
            out.append(f"{req.name}: constraints.txt pins {pinned}, outside pyproject.toml's {raw!r}")
    return out


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        bad = conflicts(
            (ROOT / "pyproject.toml").read_text(encoding="utf-8"),
            (ROOT / "constraints.txt").read_text(encoding="utf-8"),
        )
        for line in bad:
            print(f"constraints.txt conflicts with pyproject.toml: {line}", file=sys.stderr)
        if bad:
            print("run `make constraints` to resolve it again", file=sys.stderr)
        return 1 if bad else 0
    pins = resolve()
    head = [
        "# The tested set of every distribution scanner-agent and its Prefect server install.",
        "# Made by `make constraints` (scripts/make_constraints.py:",
        "#   pip install --dry-run --ignore-installed --report '.[test,lint]')",
        f"# on {date.today().isoformat()} with Python {platform.python_version()} on {sys.platform};"
        " install with: pip install -c constraints.txt scanner_agent-*.whl",
    ]
    body = [f"{name}=={version}" for name, version in pins]
    (ROOT / "constraints.txt").write_text("\n".join(head + body) + "\n", encoding="utf-8")
    print(f"constraints.txt: {len(pins)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
