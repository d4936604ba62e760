"""A downstream flow for stored scans, as a lab would hang on ``setup-prefect --on-stored``.

It opens the stored file at ``path``, hashes it, and writes a receipt ``<barcode>.json`` into
``$RECEIPT_DIR`` (so a test sees that it read the file). Served with ``flow.serve``:

    RECEIPT_DIR=/tmp/receipts python tests/downstream_flow.py events-test
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from prefect import flow


@flow(name="stored-scan-receipt")
def stored_scan_receipt(
    path: str, barcode: str, stored_path: str | None = None, sha256: str | None = None
) -> dict[str, object]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    receipt = {
        "path": path,
        "barcode": barcode,
        "stored_path": stored_path,
        "sha256_expected": sha256,
        "sha256": digest.hexdigest(),
        "size": size,
    }
    out = Path(os.environ["RECEIPT_DIR"]) / f"{barcode}.json"
    out.write_text(json.dumps(receipt), encoding="utf-8")
    return receipt


if __name__ == "__main__":
    stored_scan_receipt.serve(name=sys.argv[1] if len(sys.argv) > 1 else "events-test")
