"""Install and upgrade: constraints.txt agrees with pyproject.toml's ranges (CI fails when it does
not, naming the package); the package data is the files in systemd/ and config/; and (slow) a wheel
built from the tree installs with ``-c constraints.txt`` into a fresh venv and runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from scanner_agent import cli
from scripts.make_constraints import conflicts

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
CONSTRAINTS = (ROOT / "constraints.txt").read_text(encoding="utf-8")


def test_constraints_agree_with_pyproject() -> None:
    assert conflicts(PYPROJECT, CONSTRAINTS) == []


def test_a_pin_outside_a_range_is_named() -> None:
    bad = CONSTRAINTS.replace("\nprefect==3.9.1\n", "\nprefect==3.8.8\n")
    assert bad != CONSTRAINTS
    [msg] = conflicts(PYPROJECT, bad)
    assert msg.startswith(
        "prefect: constraints.txt pins 3.8.8, outside pyproject.toml's 'prefect>=3.9.1,<3.10'"
    )


def test_an_unpinned_dependency_and_a_bad_line_are_named() -> None:
    lines = [ln for ln in CONSTRAINTS.splitlines() if not ln.lower().startswith("watchdog==")]
    got = conflicts(PYPROJECT, "\n".join([*lines, "numpy>=2"]))
    assert any(m.startswith("watchdog: in pyproject.toml") and "not pinned" in m for m in got)
    assert any("'numpy>=2' is not name==version" in m for m in got)


def test_check_command_exits_1_on_a_conflict(tmp_path: Path) -> None:
    """What CI runs (make constraints-check): a non-zero exit with the package named."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "make_constraints.py", tree / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tree)
    (tree / "constraints.txt").write_text(CONSTRAINTS.replace("\nprefect==3.9.1\n", "\nprefect==3.10.0\n"))
    out = subprocess.run(
        [sys.executable, str(tree / "scripts" / "make_constraints.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "constraints.txt conflicts with pyproject.toml: prefect: constraints.txt pins 3.10.0" in out.stderr
    ok = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_constraints.py"), "--check"])
    assert ok.returncode == 0


@pytest.mark.parametrize(
    ("packaged", "source"),
    [
        ("scanner-agent@.service", "systemd/scanner-agent@.service"),
        ("scanner-agent.sysusers.conf", "systemd/scanner-agent.sysusers.conf"),
        ("example.toml", "config/cardinal.toml"),
    ],
)
def test_package_data_is_the_one_source(packaged: str, source: str) -> None:
    """The package data are links to the files people edit: never a second copy to drift."""
    link = ROOT / "scanner_agent" / "data" / packaged
    assert link.is_symlink() and link.resolve() == (ROOT / source).resolve()
    assert cli._packaged(packaged) == (ROOT / source).read_text(encoding="utf-8")


def test_print_unit_and_init_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["print-unit"]) == 0
    assert capsys.readouterr().out == (ROOT / "systemd" / "scanner-agent@.service").read_text()
    assert cli.main(["init-config", "Raven"]) == 0
    text = capsys.readouterr().out
    assert 'name = "Raven"' in text and "/var/lib/scanner-agent/raven.sqlite" in text
    assert "ardinal" not in text
    out = tmp_path / "raven.toml"
    assert cli.main(["init-config", "Raven", "--output", str(out)]) == 0
    assert out.read_text() == text
    assert cli.main(["init-config", "Raven", "--output", str(out)]) == 2  # never over an edited file
    assert "exists" in capsys.readouterr().err
    assert cli.main(["init-config", "../etc"]) == 2


@pytest.mark.slow
def test_wheel_installs_with_constraints_into_a_fresh_venv(tmp_path: Path) -> None:
    """A wheel from (a copy of) the tree, installed with -c constraints.txt, runs `--help` and
    `check --offline` on a config made by its own `init-config`."""
    tree = tmp_path / "src"
    shutil.copytree(
        ROOT,
        tree,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "demo-run", "build", "dist", "*.egg-info", "__pycache__"
        ),
    )
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dist), str(tree)],
        check=True,
    )
    [wheel] = dist.glob("scanner_agent-*.whl")
    env_dir = tmp_path / "opt" / "scanner-agent" / ".venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"), str(wheel)],
        check=True,
    )
    exe = env_dir / "bin" / "scanner-agent"
    helped = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "print-unit" in helped.stdout and "init-config" in helped.stdout
    unit = subprocess.run([str(exe), "print-unit"], capture_output=True, text=True, check=True).stdout
    assert unit == (ROOT / "systemd" / "scanner-agent@.service").read_text()
    # the example config, pointed at this test's folders and a CSV sheet, as an admin edits it
    cfg = tmp_path / "raven.toml"
    subprocess.run([str(exe), "init-config", "Raven", "--output", str(cfg)], check=True)
    for d in ("scanner", "storage", "state"):
        (tmp_path / d).mkdir()
    (tmp_path / "storage" / ".scanner-agent-storage").touch()
    shutil.copy(ROOT / "config" / "sample-sheet.csv", tmp_path / "sheet.csv")
    edits = {
        "watch": tmp_path / "scanner",
        "root": tmp_path / "storage",
        "path": tmp_path / "state" / "raven.sqlite",
        "spreadsheet_key": None,
        "worksheet": None,
        "credentials_file": None,
        "slack_token_file": None,
        "smtp_password_file": None,
    }
    lines = []
    for line in cfg.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key in edits:
            if edits[key] is None:
                continue
            line = f'{key} = "{edits[key]}"'
        lines.append(line)
        if line == "[sheet]":
            lines.append(f'csv = "{tmp_path / "sheet.csv"}"')
    cfg.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SCANNER_AGENT_", "SLACK_"))}
    # the secrets arrive from the environment (the unit's EnvironmentFile), never the TOML
    env |= {"SLACK_BOT_TOKEN": "xoxb-not-used-offline", "SCANNER_AGENT_ALERTS__SMTP_PASSWORD": "not-used"}
    if os.geteuid() == 0:  # the suite's container runs as root; a scanner PC never does
        env["SCANNER_AGENT_SCANNER__ALLOW_ROOT"] = "true"
    checked = subprocess.run(
        [str(exe), "check", "--offline", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "raven.toml: OK" in checked.stdout
