"""``core/`` touches no files: no ``open()``, no ``pathlib.Path`` (only the Pure* classes), no disk methods.

Read with ``ast`` like the import rules in ``test_import_layers.py``, which keep ``os`` and the
like out of core; this catches what an allowed import could still do (``pathlib``, ``posixpath``).
"""

from __future__ import annotations

import ast
from collections.abc import Set

from tests.unit.test_import_layers import all_modules, module_name, part_of, report

#: Methods of pathlib.Path (not of PurePath) and os.path functions that read or change the disk.
_DISK_METHODS = {
    "absolute",
    "chmod",
    "cwd",
    "exists",
    "expanduser",
    "glob",
    "hardlink_to",
    "home",
    "is_dir",
    "is_file",
    "is_symlink",
    "iterdir",
    "lstat",
    "mkdir",
    "open",
    "read_bytes",
    "read_text",
    "readlink",
    "resolve",
    "rglob",
    "rmdir",
    "samefile",
    "stat",
    "symlink_to",
    "touch",
    "unlink",
    "write_bytes",
    "write_text",
}
_DISK_PATH_FUNCTIONS = {
    "abspath",
    "exists",
    "expanduser",
    "getatime",
    "getctime",
    "getmtime",
    "getsize",
    "isdir",
    "isfile",
    "islink",
    "ismount",
    "lexists",
    "realpath",
    "samefile",
}
_PURE_PATHLIB = {"PurePath", "PurePosixPath", "PureWindowsPath"}


def defined_functions(sources: list[str]) -> set[str]:
    """Every function and method name defined in ``sources``."""
    return {
        node.name
        for source in sources
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def disk_calls(source: str, module: str, own: Set[str] = frozenset()) -> list[str]:
    """What in ``source`` reads or changes the disk, as "module (line n): call", in line order.

    A method name in ``own`` (defined in core itself, e.g. a ``Sources.exists`` that looks in a
    set) is core's own, not pathlib's.
    """
    found: list[tuple[int, str]] = []

    def say(node: ast.stmt | ast.expr, what: str) -> None:
        found.append((node.lineno, what))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "pathlib":
            for alias in node.names:
                if alias.name not in _PURE_PATHLIB:
                    say(node, f"from pathlib import {alias.name} (only {', '.join(sorted(_PURE_PATHLIB))})")
        elif isinstance(node, ast.ImportFrom) and node.module in {"posixpath", "os.path"}:
            for alias in node.names:
                if alias.name in _DISK_PATH_FUNCTIONS:
                    say(node, f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in {"open", "Path", "__import__"}:
                say(node, f"{func.id}(...)")
            elif isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else None
                if owner == "pathlib" and func.attr not in _PURE_PATHLIB:
                    say(node, f"pathlib.{func.attr}(...)")
                elif owner in {"posixpath", "io"} and (
                    func.attr in _DISK_PATH_FUNCTIONS or func.attr == "open"
                ):
                    say(node, f"{owner}.{func.attr}(...)")
                elif func.attr in _DISK_METHODS and func.attr not in own:
                    say(node, f".{func.attr}(...)")
    return [f"{module} (line {line}): {what}" for line, what in sorted(found)]


def test_core_makes_no_filesystem_calls() -> None:
    core = {
        module_name(path): path.read_text(encoding="utf-8")
        for path in all_modules()
        if part_of(module_name(path)) == "core"
    }
    own = defined_functions(list(core.values()))
    problems = [call for module, source in core.items() for call in disk_calls(source, module, own)]
    report(problems, "filesystem calls in core/")


def test_the_disk_call_check_catches_what_it_should() -> None:
    sample = (
        "from pathlib import Path, PurePosixPath\n"
        "import posixpath\n"
        "PurePosixPath('a').name\n"
        "open('x')\n"
        "Path('x').read_text()\n"
        "posixpath.exists('x')\n"
        "posixpath.join('a', 'b')\n"
        "'abc'.replace('a', 'b')\n"
        "rows.exists('x')\n"
    )
    assert disk_calls(sample, "m") == [
        "m (line 1): from pathlib import Path (only PurePath, PurePosixPath, PureWindowsPath)",
        "m (line 4): open(...)",
        "m (line 5): .read_text(...)",
        "m (line 5): Path(...)",
        "m (line 6): posixpath.exists(...)",
        "m (line 9): .exists(...)",
    ]
    assert disk_calls("rows.exists('x')\n", "m", own={"exists"}) == []
