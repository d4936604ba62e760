"""The layers hold: imports point down only, adapters are entered through their package, core stays pure.

Reads every module of ``scanner_agent/`` with ``ast`` (imports inside functions count too), so
nothing is imported and no module needs its dependencies installed. A failure names the module,
the line and the import. That core makes no filesystem calls is checked in ``test_core_no_disk.py``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

# --- the table -------------------------------------------------------------------------------------

CORE = frozenset({"core"})
FOUNDATION = frozenset({"scanunit", "fileio", "secret_files", "config"})
ADAPTERS = frozenset({"journal", "sheets", "storage", "slides", "alerts", "watch", "systemd"})
_BELOW_PIPELINE = CORE | FOUNDATION | ADAPTERS
_BELOW_SERVICE = _BELOW_PIPELINE | {"pipeline", "orchestration"}

#: Which parts of scanner_agent each part may import (besides itself). Low to high:
#: core < {scanunit, fileio, secret_files < config} < adapters < pipeline < orchestration < service
#: < {reports, testing} < cli. Whoever imports an adapter from outside it (another adapter
#: too) goes through its package, never its modules: see test_adapters_are_entered_through_their_package.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "core": frozenset(),
    **dict.fromkeys(FOUNDATION, CORE),
    "config": CORE | {"secret_files"},
    **dict.fromkeys(ADAPTERS, CORE | FOUNDATION | ADAPTERS),
    "pipeline": _BELOW_PIPELINE,
    "orchestration": _BELOW_PIPELINE | {"pipeline"},
    "service": _BELOW_SERVICE,
    "reports": _BELOW_SERVICE | {"service"},
    "testing": _BELOW_SERVICE | {"service"},
    "cli": _BELOW_SERVICE | {"service", "reports", "testing"},
    "__init__": frozenset(),  # the top package itself: its docstring only
}

#: Standard-library modules that compute without touching the outside world, plus numpy: all
#: that ``core/`` may import besides ``scanner_agent.core``. Add one here only if it is pure.
CORE_MAY_IMPORT = {
    "__future__",
    "abc",
    "base64",
    "binascii",
    "bisect",
    "calendar",
    "collections",
    "collections.abc",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.utils",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "json",
    "math",
    "numbers",
    "operator",
    "pathlib",  # only its Pure* classes: see test_core_makes_no_filesystem_calls
    "posixpath",  # string functions only: idem
    "re",
    "statistics",
    "string",
    "textwrap",
    "time",
    "types",
    "typing",
    "unicodedata",
    "urllib.parse",
    "zlib",
    "numpy",
    "numpy.typing",
}

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "scanner_agent"


# --- reading the imports ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "scanner_agent.watch.watcher"
    line: int
    target: str  # the absolute module imported from, e.g. "scanner_agent.core.errors"
    names: tuple[str, ...]  # for ``from target import a, b``; empty for ``import target``
    text: str  # the statement as written

    @property
    def part(self) -> str:
        return part_of(self.module)

    def target_part(self) -> str | None:
        """The part of scanner_agent imported, or None for an outside module."""
        bits = self.target.split(".")
        if bits[0] != "scanner_agent":
            return None
        if len(bits) == 1:  # ``from scanner_agent import x``: x is the part
            return None
        return bits[1].removesuffix(".py")

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}): {self.text}"


def part_of(module: str) -> str:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    bits = list(rel.parts)
    if bits[-1] == "__init__" and len(bits) > 1:
        bits.pop()
    return ".".join(bits)


def read_imports(path: Path) -> list[Import]:
    module = module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(Import(module, node.lineno, a.name, (), f"import {a.name}") for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node.module, node.level)
            names = tuple(a.name for a in node.names)
            shown = "." * node.level + (node.module or "")
            stmt = f"from {shown} import {', '.join(names)}"
            if target == "scanner_agent":  # ``from scanner_agent import journal``: one import per part
                out.extend(Import(module, node.lineno, f"scanner_agent.{n}", (), stmt) for n in names)
            else:
                out.append(Import(module, node.lineno, target, names, stmt))
    return out


def _absolute(module: str, is_package: bool, name: str | None, level: int) -> str:
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def all_modules() -> list[Path]:
    return sorted(PACKAGE_ROOT.rglob("*.py"))


ALL_IMPORTS = [imp for path in all_modules() for imp in read_imports(path)]


def exported(package: str) -> set[str]:
    """The names in a package's ``__all__`` (empty if it has none)."""
    init = PACKAGE_ROOT.parent.joinpath(*package.split("."), "__init__.py")
    for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return {str(v) for v in ast.literal_eval(node.value)}
    return set()


def is_submodule(target: str, name: str) -> bool:
    """Whether ``from target import name`` imports a module (a file or folder) rather than a name."""
    folder = PACKAGE_ROOT.parent.joinpath(*target.split("."))
    return (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file()


def report(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{len(problems)} {what}:\n  " + "\n  ".join(problems), pytrace=False)


# --- the rules ----------------------------------------------------------------------------------------


def test_the_table_names_every_part_of_the_package() -> None:
    parts = {part_of(module_name(p)) for p in all_modules()}
    assert parts - MAY_IMPORT.keys() == set(), "a new part of scanner_agent needs a row in MAY_IMPORT"


def test_the_reader_sees_imports_inside_functions_and_relative_ones() -> None:
    seen = {(i.module, i.target) for i in ALL_IMPORTS}
    # simulator imports synthetic lazily, relatively, inside a function
    assert ("scanner_agent.testing.simulator", "scanner_agent.testing") in seen
    assert _absolute("scanner_agent.watch.units", False, "probes", 1) == "scanner_agent.watch.probes"
    assert _absolute("scanner_agent.watch", True, "units", 1) == "scanner_agent.watch.units"
    assert _absolute("scanner_agent.watch.units", False, "core", 2) == "scanner_agent.core"


def core_import_problems(imports: list[Import]) -> list[str]:
    return [
        str(imp)
        for imp in imports
        if imp.part == "core"
        and imp.target_part() != "core"
        and (imp.target.startswith("scanner_agent") or imp.target not in CORE_MAY_IMPORT)
    ]


def layer_problems(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        target = imp.target_part()
        if target is not None and target != imp.part and target not in MAY_IMPORT.get(imp.part, frozenset()):
            problems.append(f"{imp}  [{imp.part} may not import {target}]")
    return problems


def adapter_entry_problems(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        target = imp.target_part()
        if target not in ADAPTERS or target == imp.part:
            continue
        package = f"scanner_agent.{target}"
        if imp.target != package:
            problems.append(f"{imp}  [use `from {package} import ...`]")
        else:
            problems.extend(
                f"{imp}  [{name} is a module of {package}; import the name it exports]"
                for name in imp.names
                if is_submodule(package, name) and name not in exported(package)
            )
    return problems


def prefect_in_pipeline_problems(imports: list[Import]) -> list[str]:
    return [
        str(imp)
        for imp in imports
        if imp.part == "pipeline" and (imp.target == "prefect" or imp.target.startswith("prefect."))
    ]


def test_core_imports_only_pure_modules() -> None:
    report(core_import_problems(ALL_IMPORTS), "imports in core/ of modules that are not pure (or not core)")


def test_arrows_point_down() -> None:
    report(layer_problems(ALL_IMPORTS), "imports against the layer order")


def test_adapters_are_entered_through_their_package() -> None:
    report(adapter_entry_problems(ALL_IMPORTS), "imports of an adapter's modules from outside it")


def test_pipeline_imports_no_prefect() -> None:
    report(prefect_in_pipeline_problems(ALL_IMPORTS), "Prefect imports in pipeline")


def test_the_rules_catch_what_they_should() -> None:
    def imp(module: str, target: str, *names: str) -> Import:
        return Import(module, 1, target, names, f"from {target} import {', '.join(names)}")

    bad_core = [
        imp("scanner_agent.core.x", "os", "path"),
        imp("scanner_agent.core.x", "threading", "Lock"),
        imp("scanner_agent.core.x", "PIL", "Image"),
        imp("scanner_agent.core.x", "scanner_agent.scanunit", "ScanUnit"),
    ]
    good_core = [imp("scanner_agent.core.x", "re"), imp("scanner_agent.core.x", "scanner_agent.core.errors")]
    assert len(core_import_problems(bad_core + good_core)) == len(bad_core)

    upward = [
        imp("scanner_agent.core.x", "scanner_agent.watch", "ScanWatcher"),
        imp("scanner_agent.config", "scanner_agent.journal", "Journal"),
        imp("scanner_agent.storage.transfer", "scanner_agent.orchestration", "flows"),
        imp("scanner_agent.pipeline.steps", "scanner_agent.service", "Agent"),
        imp("scanner_agent.service.daemon", "scanner_agent.cli", "main"),
        imp("scanner_agent.reports.status", "scanner_agent.testing", "synthetic"),
    ]
    downward = [
        imp("scanner_agent.cli", "scanner_agent.reports", "status"),
        imp("scanner_agent.storage.transfer", "scanner_agent.fileio", "fsync_dir"),
        imp("scanner_agent.watch.units", "scanner_agent.watch.probes", "x"),
    ]
    assert [p.split("[")[1] for p in layer_problems(upward + downward)] == [
        "core may not import watch]",
        "config may not import journal]",
        "storage may not import orchestration]",
        "pipeline may not import service]",
        "service may not import cli]",
        "reports may not import testing]",
    ]

    into_modules = [
        imp("scanner_agent.alerts.alerter", "scanner_agent.journal.store", "Journal"),
        imp("scanner_agent.pipeline.steps", "scanner_agent.watch", "units"),
    ]
    through_packages = [
        imp("scanner_agent.alerts.alerter", "scanner_agent.journal", "Journal"),
        imp("scanner_agent.service.daemon", "scanner_agent.systemd", "notify"),  # in systemd's __all__
        imp("scanner_agent.watch.watcher", "scanner_agent.watch.units", "discover_units"),  # its own
    ]
    assert len(adapter_entry_problems(into_modules + through_packages)) == len(into_modules)

    assert prefect_in_pipeline_problems(
        [
            imp("scanner_agent.pipeline.steps", "prefect", "task"),
            imp("scanner_agent.orchestration.flows", "prefect"),
        ]
    ) == ["scanner_agent.pipeline.steps (line 1): from prefect import task"]
