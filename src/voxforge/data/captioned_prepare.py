"""The prepare job shared by the captioned image and video families.

`prepare_images` and `prepare_videos` are one job over different files: this module is that
job, and a family (`CaptionedFamily`) says only what differs (which archive members and files
it takes, what decides that a previous record still stands, the worker task and its record,
the summary). The job:

1. checks the sources (each a folder outside OUT, or a zip / tar archive);
2. expands each archive into OUT/archives/<sha>/ (a refused archive is one failed record)
   and discovers the items of each source, with the family's failed records and notes;
3. hashes each item (cached by size and modification time from the previous manifest; an
   unreadable file fails as `unreadable`), records the same bytes twice as `duplicate`, and
   keeps a previous record of the same bytes when the family says it still stands;
4. runs the other items' tasks in worker processes (a time limit each, unless in-process),
   appending each record to OUT/manifest.jsonl as it finishes, so a killed run loses nothing
   finished;
5. refreshes the kept records with today's caption, labels, source name and the warnings
   found while reading the sources, then rewrites OUT/manifest.jsonl (one line per source
   file, sorted) and OUT/dataset.json (the family's summary) atomically.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Protocol

from voxforge.data.archive import archive_kind
from voxforge.data.captioned_sources import SourceItem
from voxforge.data.image_manifest import DATASET_INFO, MANIFEST, read_manifest
from voxforge.data.ingest import sha256_file
from voxforge.data.safety import is_within
from voxforge.errors import UserError
from voxforge.representations.mesh import AssetError

__all__ = ["CaptionedFamily", "RunSettings", "prepare_captioned"]


class CaptionedFamily(Protocol):
    """What one family's prepare job does differently; `prepare_captioned` does the rest."""

    desc: str  # the progress bar's label
    unit: str  # what the progress bar counts
    parallel_from: int  # with workers=-1, this many tasks or more run in a process pool
    discovery_reasons: Collection[str]  # warnings re-made from the sources on every run
    worker: Callable[[dict[str, Any], Any], None]  # `voxforge.data.workers.run_tasks` task function

    def check(self, sources: Sequence[str | Path]) -> None:
        """Refuse sources the family cannot take (UserError), before each is checked."""
        ...

    def expand(self, archive: Path, root: Path) -> None:
        """Extract the family's members of `archive` into `root` (raises AssetError)."""
        ...

    def discover(
        self, index: int, src: Path, root: Path, out: Path
    ) -> tuple[list[Any], list[dict[str, Any]], list[str]]:
        """The items (`SourceItem`s) of one source expanded at `root`, failed records, notes."""
        ...

    def failed(
        self, index: int, source: str, file_name: str, reason: str, error: str, sha: str | None = None
    ) -> dict[str, Any]:
        """The family's record of a file (or archive) that failed before its task."""
        ...

    def identify(self, item: Any) -> None:
        """Hash what the item depends on besides its bytes (may raise OSError)."""
        ...

    def stands(self, item: Any, before: dict[str, Any], out: Path) -> bool:
        """Whether a previous record of the same bytes is kept as it is."""
        ...

    def task(self, key: str, item: Any, out: Path) -> dict[str, Any]:
        """The worker task of one item."""
        ...

    def record(self, item: Any, fields: dict[str, Any]) -> dict[str, Any]:
        """The manifest record of one item from the fields its task reported."""
        ...

    def finish(self, records: list[dict[str, Any]]) -> None:
        """Complete the records of this run (in place) before they are written."""
        ...

    def summarize(
        self, records: list[dict[str, Any]], sources: Sequence[Any], notes: list[str]
    ) -> dict[str, Any]:
        """The content of dataset.json."""
        ...


class RunSettings(Protocol):
    """The settings of a prepare config that say how its tasks run."""

    workers: int  # worker processes (-1: auto, 0: in this process)
    time_limit: float | None  # seconds per task in a worker (None: unlimited)
    progress: bool  # show a progress bar


def prepare_captioned(
    sources: Sequence[str | Path], out: Path, family: CaptionedFamily, settings: RunSettings
) -> dict[str, Any]:
    """Prepare (or finish preparing) the sources into OUT; returns the summary (dataset.json + counts)."""
    from voxforge.data.workers import default_workers, run_tasks

    _check_sources(sources, out, family)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    items, notes = _discover(sources, out, family, records)
    planned, kept, tasks = _plan(items, out, family, records)

    results: dict[str, dict[str, Any]] = {}
    bar = None
    if settings.progress and tasks:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=family.desc, unit=family.unit, file=sys.stderr, dynamic_ncols=True)
    log_file = open(out / MANIFEST, "a", encoding="utf-8")  # noqa: SIM115 - closed below

    def on_message(key: str, message: Any) -> None:
        results[key] = family.record(planned[key], message[1])
        log_file.write(json.dumps(results[key]) + "\n")
        log_file.flush()

    def on_failure(key: str, reason: str, detail: str) -> None:
        on_message(key, ("result", {"status": "failed", "reason": reason, "error": detail}))

    def on_finished(key: str) -> None:
        if bar is not None:
            bar.update(1)

    workers = settings.workers
    if workers < 0:
        workers = 0 if len(tasks) < family.parallel_from else default_workers()
    began = time.perf_counter()
    try:
        run_tasks(
            tasks, family.worker, workers=workers, time_limit=settings.time_limit if workers else None,
            on_message=on_message, on_failure=on_failure, on_finished=on_finished, threads=1 if workers else None,
        )  # fmt: skip
    finally:
        log_file.close()
        if bar is not None:
            bar.close()
    for key, item in planned.items():
        records.append(results[key] if key in results else _refreshed(kept[key], item, family))
    family.finish(records)
    records.sort(key=lambda r: (r["source_index"], r["file_name"]))
    _write_atomic(out / MANIFEST, "".join(json.dumps(r) + "\n" for r in records))
    info = family.summarize(records, sources, notes)
    _write_atomic(out / DATASET_INFO, json.dumps(info, indent=1) + "\n")
    info["this_run"] = {
        "processed": len(results),
        "skipped": len(kept),
        "seconds": time.perf_counter() - began,
    }
    return info


def _check_sources(sources: Sequence[str | Path], out: Path, family: CaptionedFamily) -> None:
    if not sources:
        raise UserError("give at least one source folder or archive")
    family.check(sources)
    for src in map(Path, sources):
        if not src.exists():
            raise UserError(f"source {src} does not exist")
        if not src.is_dir() and archive_kind(src) is None:
            raise UserError(f"source {src} is neither a folder nor a .zip / .tar / .tar.gz archive")
        if src.is_dir() and (src.resolve() == out.resolve() or is_within(src, out)):
            raise UserError(f"the source folder {src} must not be (or lie inside) the output folder {out}")


def _discover(
    sources: Sequence[str | Path], out: Path, family: CaptionedFamily, records: list[dict[str, Any]]
) -> tuple[list[SourceItem], list[str]]:
    """The items of every source and the notes on them; failed records are appended to `records`."""
    notes: list[str] = []
    items: list[SourceItem] = []
    for index, src in enumerate(map(Path, sources)):
        root = src
        if not src.is_dir():
            sha = sha256_file(src)
            root = out / "archives" / sha[:16]
            try:
                family.expand(src, root)
            except AssetError as err:
                records.append(family.failed(index, str(src), src.name, err.reason, str(err), sha))
                continue
        found, failures, source_notes = family.discover(index, src, root, out)
        items += found
        records += failures
        notes += [f"{src}: {n}" for n in source_notes]
    return items, notes


def _plan(
    items: list[SourceItem], out: Path, family: CaptionedFamily, records: list[dict[str, Any]]
) -> tuple[dict[str, SourceItem], dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Hash (cached by size and mtime), dedupe and plan: (planned items, kept records, tasks) by key."""
    previous = {(r.get("source"), r.get("file_name")): r for r in read_manifest(out)}
    owners: dict[str, SourceItem] = {}
    planned: dict[str, SourceItem] = {}
    kept: dict[str, dict[str, Any]] = {}  # key -> previous record reused as it is
    tasks: list[dict[str, Any]] = []
    for item in items:
        key = f"{item.source_index}:{item.file_name}"
        before = previous.get((item.source, item.file_name))
        try:
            info = item.path.stat()
            family.identify(item)
            if before and before.get("bytes") == info.st_size and before.get("mtime") == info.st_mtime:
                item.sha = before.get("sha")
            item.sha = item.sha or sha256_file(item.path)
        except OSError as err:
            records.append(
                family.failed(item.source_index, item.source, item.file_name, "unreadable", str(err))
            )
            continue
        item.id, item.stat = item.sha[:16], (info.st_size, info.st_mtime)
        if item.id in owners:
            first = owners[item.id]
            records.append(
                family.failed(item.source_index, item.source, item.file_name, "duplicate",
                              f"{item.file_name} has the same content as {first.source}/{first.file_name}", item.sha)
            )  # fmt: skip
            continue
        owners[item.id] = item
        planned[key] = item
        if before and before.get("sha") == item.sha and family.stands(item, before, out):
            kept[key] = before
            continue
        tasks.append(family.task(key, item, out))
    return planned, kept, tasks


def _refreshed(before: dict[str, Any], item: SourceItem, family: CaptionedFamily) -> dict[str, Any]:
    """A kept record with today's caption, labels, source name and source warnings."""
    record = dict(before)
    pairs = zip(record.get("warnings", []), record.get("warning_reasons", []))
    found = [(m, c) for m, c in pairs if c not in family.discovery_reasons]  # made by processing
    record["warnings"] = item.warnings + [m for m, _ in found]
    record["warning_reasons"] = item.warning_reasons + [c for _, c in found]
    record.update(caption=item.caption, extra=item.extra, source=item.source, source_index=item.source_index)
    return record


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
