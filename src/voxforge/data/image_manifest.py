"""The files of a prepared image folder that the ingest writes and the dataset reads.

OUT/manifest.jsonl holds one record per source file (done or failed, with its reason and
warnings, bucket, caption, mixing weight, and what the stored image depends on); records are
appended as they finish and the file is rewritten in order at the end, so `read_manifest`
lets the last record of a (source, file_name) win and skips the cut-off last line of a killed
run. OUT/dataset.json is the summary (bucket table, counts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["DATASET_INFO", "FORMAT_VERSION", "MANIFEST", "read_manifest", "write_atomic"]

MANIFEST = "manifest.jsonl"
DATASET_INFO = "dataset.json"
FORMAT_VERSION = 1


def read_manifest(out: str | Path) -> list[dict[str, Any]]:
    """The records of OUT/manifest.jsonl; for a (source, file_name) listed twice the last wins."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return []
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run
            continue
        if isinstance(record, dict) and "file_name" in record:
            records[(str(record.get("source")), str(record["file_name"]))] = record
    return list(records.values())


def write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
