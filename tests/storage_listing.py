"""What a person sees in storage, for tests that compare it file by file.

Every storage folder keeps a ``SHA256SUMS`` beside the images (``sha256sum -c`` checks it). The
listings here check each one with the real ``sha256sum`` and then leave it out, so a test that
names the images and sidecars it expects keeps doing so, and a wrong or stale SHA256SUMS still
fails it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

SUMS = "SHA256SUMS"


def check_sums(root: Path) -> None:
    """Every ``SHA256SUMS`` under ``root`` (outside ``.incoming``) passes ``sha256sum -c`` in its folder."""
    if not root.exists():
        return
    for d, _dirs, fs in os.walk(root):
        if ".incoming" in Path(d).parts or SUMS not in fs:
            continue
        done = subprocess.run(
            ["sha256sum", "--check", "--strict", "--quiet", SUMS], cwd=d, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{Path(d, SUMS)} does not check: {done.stdout}{done.stderr}"


def without_sums(paths: Iterable[Path]) -> list[Path]:
    """``paths`` less the SHA256SUMS files."""
    return [p for p in paths if p.name != SUMS]


def stored_files(root: Path) -> list[Path]:
    """Every file a person sees in storage (everything outside ``.incoming`` folders), sorted, less
    the SHA256SUMS files, each checked with ``sha256sum -c`` first."""
    check_sums(root)
    return sorted(
        without_sums(
            Path(d, f) for d, _dirs, fs in os.walk(root) if ".incoming" not in Path(d).parts for f in fs
        )
    )
