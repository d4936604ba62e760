"""``place_scan(gate=...)``: a real verified copy paced by the transfer gate through its own parameter."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner_agent.scanunit import ScanUnit
from scanner_agent.storage import TransferGate, place_scan


@pytest.fixture
def other_fs() -> Iterator[Path]:
    """A destination on another filesystem than tmp_path, so the scan is copied, not hard-linked."""
    d = Path("/dev/shm") / f"gate-{os.getpid()}"
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_gate_paces_every_byte_of_a_verified_copy(tmp_path: Path, other_fs: Path) -> None:
    src = tmp_path / "src" / "a.svs"
    src.parent.mkdir()
    data = os.urandom(3 << 20)
    src.write_bytes(data)
    # 8 MB/s with a quarter-second bucket: 2 MB go at once, the rest has to wait for tokens.
    gate = TransferGate(8e6)
    r = place_scan(ScanUnit.from_path(src), other_fs, "N.svs", sidecar={}, bufsize=256 << 10, gate=gate)
    assert not r.linked
    assert r.dest.read_bytes() == data
    assert gate.bytes_taken >= len(data)
    assert gate.seconds_waited > 0


def test_a_gate_and_a_chunk_hook_together_are_refused_before_anything_is_written(
    tmp_path: Path, other_fs: Path
) -> None:
    src = tmp_path / "a.svs"
    src.write_bytes(b"x" * 1000)
    with pytest.raises(ValueError, match="not both"):
        place_scan(
            ScanUnit.from_path(src),
            other_fs,
            "N.svs",
            sidecar={},
            gate=TransferGate(),
            _on_chunk=lambda p, n: None,
        )
    assert src.exists() and not (other_fs / "N.svs").exists()
    assert not any((other_fs / ".incoming").iterdir())
