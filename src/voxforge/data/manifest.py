"""The prepare manifest: one SQLite file recording every source, asset and step.

Tables
- `sources(source, id, size, mtime, duplicate_of, reason, error, updated)`: one row per input
  file (zip members appear as `archive.zip!member/path.obj`). `id` is the sha256 of the file's
  bytes; `duplicate_of` names the first source with the same content; `reason`/`error` record
  failures that happen before an asset exists (an unreadable file, a symlink leaving SRC).
- `steps(id, step, status, reason, error, warnings, seconds, stats, params, updated,
  warning_reasons)`: one row per asset and step (`expand` for archives, `ingest`, `views`,
  `cond`, `voxels_<R>`, `features_<name>_<R>`); status is `done` or `failed`; `params` is the
  JSON of the settings the step ran with, so a changed setting (e.g. more views) re-runs it
  while re-running the same command skips it. `warnings` is the JSON list of warning messages
  of a step that did its work (a missing `.mtl`: default material), `warning_reasons` the
  JSON list of their reason codes, one per message (`voxforge.data.ingest.WARNING_REASONS`),
  the column that `data status` counts. Manifests written before that column existed get it added when
  a run opens them (their older warnings count as `unclassified`); read-only views cope
  without it.
- `hashes(source, size, mtime, id)`: a cache so a resumed run does not re-hash unchanged files.

Only the parent process writes (workers send results over pipes), so one connection with WAL
journaling suffices. With `--world-size > 1` every rank writes its own file
`manifest.rank<r>-of-<n>.sqlite` (SQLite must not be shared across machines over a network file
system); readers (`ManifestView`, `voxforge data status`, `PreparedDataset`) merge all files.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY, id TEXT, size INTEGER, mtime REAL,
    duplicate_of TEXT, reason TEXT, error TEXT, updated REAL
);
CREATE INDEX IF NOT EXISTS sources_id ON sources(id);
CREATE TABLE IF NOT EXISTS steps (
    id TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, error TEXT,
    warnings TEXT, seconds REAL, stats TEXT, params TEXT, updated REAL, warning_reasons TEXT,
    PRIMARY KEY (id, step)
);
CREATE TABLE IF NOT EXISTS hashes (source TEXT PRIMARY KEY, size INTEGER, mtime REAL, id TEXT);
"""


STEP_COLUMNS = "id, step, status, reason, error, warnings, seconds, stats, params, updated, warning_reasons"


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _warning_reasons(codes: str | None, messages: list[str]) -> list[str]:
    """Codes of a row, one per message; a row from before the column existed has none."""
    parsed = json.loads(codes) if codes is not None else []
    if len(parsed) != len(messages):
        return (parsed + ["unclassified"] * len(messages))[: len(messages)]
    return parsed


def manifest_name(rank: int = 0, world_size: int = 1) -> str:
    return "manifest.sqlite" if world_size == 1 else f"manifest.rank{rank}-of-{world_size}.sqlite"


def manifest_files(root: Path) -> list[Path]:
    """All manifest files of a prepared folder (single run or one per rank)."""
    root = Path(root)
    return sorted(p for p in root.glob("manifest*.sqlite") if p.is_file())


class Manifest:
    """Read-write manifest of one rank."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        if "warning_reasons" not in _columns(self.db, "steps"):  # a manifest of an older version
            self.db.execute("ALTER TABLE steps ADD COLUMN warning_reasons TEXT")
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta ------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        self.db.commit()

    # -- hashing cache -----------------------------------------------------------
    def cached_hash(self, source: str, size: int, mtime: float) -> str | None:
        row = self.db.execute("SELECT size, mtime, id FROM hashes WHERE source = ?", (source,)).fetchone()
        if row and row[0] == size and row[1] == mtime:
            return row[2]
        return None

    def store_hash(self, source: str, size: int, mtime: float, asset_id: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)", (source, size, mtime, asset_id))

    # -- sources -----------------------------------------------------------------
    def record_source(
        self,
        source: str,
        asset_id: str | None,
        *,
        size: int | None = None,
        mtime: float | None = None,
        duplicate_of: str | None = None,
        reason: str | None = None,
        error: str | None = None,
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (source, asset_id, size, mtime, duplicate_of, reason, error, time.time()),
        )

    # -- steps -------------------------------------------------------------------
    def step(self, asset_id: str, step: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT status, reason, error, warnings, seconds, stats, params, warning_reasons FROM steps "
            "WHERE id = ? AND step = ?",
            (asset_id, step),
        ).fetchone()
        if row is None:
            return None
        warnings = json.loads(row[3] or "[]")
        return {
            "status": row[0],
            "reason": row[1],
            "error": row[2],
            "warnings": warnings,
            "warning_reasons": _warning_reasons(row[7], warnings),
            "seconds": row[4],
            "stats": json.loads(row[5] or "{}"),
            "params": json.loads(row[6] or "{}"),
        }

    def record_step(
        self,
        asset_id: str,
        step: str,
        status: str,
        *,
        params: dict[str, Any] | None = None,
        seconds: float | None = None,
        stats: dict[str, Any] | None = None,
        reason: str | None = None,
        error: str | None = None,
        warnings: list[str] | None = None,
        warning_reasons: list[str] | None = None,
    ) -> None:
        warnings = warnings or []
        warning_reasons = _warning_reasons(json.dumps(warning_reasons or []), warnings)
        self.db.execute(
            f"INSERT OR REPLACE INTO steps ({STEP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                asset_id,
                step,
                status,
                reason,
                error,
                json.dumps(warnings),
                seconds,
                json.dumps(stats or {}),
                json.dumps(params or {}, sort_keys=True),
                time.time(),
                json.dumps(warning_reasons),
            ),
        )
        self.db.commit()

    def commit(self) -> None:
        self.db.commit()


class ManifestView:
    """Read-only union of all manifest files in a prepared folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.files = manifest_files(self.root)
        self.sources: dict[str, dict[str, Any]] = {}
        self.steps: dict[str, dict[str, dict[str, Any]]] = {}
        self.meta: dict[str, Any] = {}
        for path in self.files:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
            try:
                for key, value in db.execute("SELECT key, value FROM meta"):
                    self.meta.setdefault(key, json.loads(value))
                for row in db.execute(
                    "SELECT source, id, size, mtime, duplicate_of, reason, error FROM sources ORDER BY source"
                ):
                    self.sources[row[0]] = dict(
                        zip(("source", "id", "size", "mtime", "duplicate_of", "reason", "error"), row)
                    )
                codes = "warning_reasons" if "warning_reasons" in _columns(db, "steps") else "NULL"
                for row in db.execute(
                    f"SELECT id, step, status, reason, error, warnings, seconds, stats, params, {codes} FROM steps"
                ):
                    warnings = json.loads(row[5] or "[]")
                    record = {
                        "status": row[2],
                        "reason": row[3],
                        "error": row[4],
                        "warnings": warnings,
                        "warning_reasons": _warning_reasons(row[9], warnings),
                        "seconds": row[6],
                        "stats": json.loads(row[7] or "{}"),
                        "params": json.loads(row[8] or "{}"),
                    }
                    self.steps.setdefault(row[0], {})[row[1]] = record
            finally:
                db.close()
        # ranks share content ids, so a duplicate may only be visible across files
        first: dict[str, str] = {}
        for source, record in sorted(self.sources.items()):
            if record["id"] is None or record["reason"]:
                continue
            if record["duplicate_of"] is None and record["id"] in first:
                record["duplicate_of"] = first[record["id"]]
            first.setdefault(record["id"], source)

    def step_names(self) -> list[str]:
        order = {"expand": 0, "ingest": 1, "views": 2, "cond": 3, "voxels": 4, "features": 5}
        names = {step for steps in self.steps.values() for step in steps}
        return sorted(names, key=lambda s: (order.get(s.split("_")[0], 6), s))

    def asset_sources(self) -> Iterable[dict[str, Any]]:
        """Sources that are assets of their own (not duplicates, not archives)."""
        for record in self.sources.values():
            if record["duplicate_of"] is None and not record["source"].lower().endswith(".zip"):
                yield record

    def summary(self) -> dict[str, Any]:
        """Counts per step (done / failed), failures and warnings grouped by reason, with examples.

        `warnings[reason]["count"]` counts the steps that did their work with that warning (an
        asset is counted once per step), `warned_assets` the assets with any warning.
        """
        steps: dict[str, dict[str, int]] = {}
        failures: dict[str, dict[str, Any]] = {}
        warnings: dict[str, dict[str, Any]] = {}
        warned: set[str] = set()
        id_to_source: dict[str, str] = {}
        for record in self.sources.values():
            if record["id"] and record["duplicate_of"] is None:
                id_to_source.setdefault(record["id"], record["source"])
            if record["reason"]:
                group = failures.setdefault(record["reason"], {"count": 0, "steps": {}, "examples": []})
                group["count"] += 1
                group["steps"]["discover"] = group["steps"].get("discover", 0) + 1
                if len(group["examples"]) < 5:
                    group["examples"].append({"source": record["source"], "error": record["error"]})
        for asset_id, asset_steps in self.steps.items():
            for step, record in asset_steps.items():
                counts = steps.setdefault(step, {"done": 0, "failed": 0})
                counts[record["status"]] = counts.get(record["status"], 0) + 1
                if record["status"] == "failed":
                    group = failures.setdefault(record["reason"], {"count": 0, "steps": {}, "examples": []})
                    group["count"] += 1
                    group["steps"][step] = group["steps"].get(step, 0) + 1
                    if len(group["examples"]) < 5:
                        group["examples"].append(
                            {"source": id_to_source.get(asset_id, asset_id), "error": record["error"]}
                        )
                    continue
                first = dict(zip(reversed(record["warning_reasons"]), reversed(record["warnings"])))
                for code, message in sorted(first.items()):
                    warned.add(asset_id)
                    group = warnings.setdefault(code, {"count": 0, "steps": {}, "examples": []})
                    group["count"] += 1
                    group["steps"][step] = group["steps"].get(step, 0) + 1
                    if len(group["examples"]) < 5:
                        group["examples"].append(
                            {"source": id_to_source.get(asset_id, asset_id), "warning": message}
                        )
        ordered = {name: steps[name] for name in self.step_names() if name in steps}
        duplicates = [
            {"source": r["source"], "duplicate_of": r["duplicate_of"]}
            for r in self.sources.values()
            if r["duplicate_of"]
        ]
        return {
            "root": str(self.root),
            "manifests": [p.name for p in self.files],
            "sources": len(self.sources),
            "assets": len({r["id"] for r in self.asset_sources() if r["id"]}),
            "duplicates": duplicates,
            "steps": ordered,
            "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1]["count"])),
            "warnings": dict(sorted(warnings.items(), key=lambda kv: (-kv[1]["count"], kv[0]))),
            "warned_assets": len(warned),
            "settings": self.meta.get("settings"),
        }
