"""What the latent caches of the image and video families share: encoder identities, immutable
safetensors shards, and a checked JSON index.

A cache folder holds `cache.json` (its index, rewritten atomically after every shard) and
`shards/<kind>-NNNNN.safetensors`. A shard is written under a temporary name, fsynced and
renamed before the index points at it, so a killed run loses at most the shard it was filling.
An encoder is identified by the sha256 of its files (`files_digest`, memoised by size and
mtime so that a multi-GB model is hashed once), a stored item by its source's sha and its
prepare settings (`source_key`). `voxforge.data.image_cache` and `voxforge.data.video_cache`
build on these.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from voxforge.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "CACHE_INDEX",
    "SHARDS_DIR",
    "ShardReader",
    "ShardWriter",
    "check_sizes",
    "delete_unused_shards",
    "files_digest",
    "open_shards",
    "read_index",
    "storage_dtype",
    "require_same_encoder",
    "source_key",
]

CACHE_INDEX = "cache.json"
SHARDS_DIR = "shards"
_SHARD = re.compile(r"^([a-z]+)-(\d{5})\.safetensors$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def storage_dtype(name: str) -> torch.dtype:
    """--dtype NAME as a torch dtype, or a `UserError` naming the choices."""
    if name not in DTYPES:
        raise UserError(f"--dtype {name}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def open_shards(out: Path) -> Path:
    """OUT/shards, made if missing, without the `.partial` shard a killed run was writing."""
    shards = out / SHARDS_DIR
    shards.mkdir(parents=True, exist_ok=True)
    for stale in shards.glob("*.partial"):
        stale.unlink()
    return shards


def delete_unused_shards(shards: Path, used: set[str]) -> None:
    """Delete the shards of `shards` no index entry points at (`used`: their file names)."""
    for shard in shards.glob("*.safetensors"):
        if shard.name not in used:
            shard.unlink()


def files_digest(folders: Sequence[str | Path], memo: dict[str, Any] | None = None) -> tuple[str, dict]:
    """sha256 over every file of `folders` (relative name and bytes, sorted), and the memo
    {absolute path: [size, mtime, sha256]} that lets the next call skip unchanged files."""
    memo = memo or {}
    digest, seen = hashlib.sha256(), {}
    for number, folder in enumerate(dict.fromkeys(Path(f).resolve() for f in folders)):
        if not folder.is_dir():
            raise UserError(f"{folder}: not a folder (an encoder's files are hashed to identify it)")
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            info = path.stat()
            key = str(path)
            known = memo.get(key)
            if known and known[0] == info.st_size and known[1] == info.st_mtime:
                sha = known[2]
            else:
                file_hash = hashlib.sha256()
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 22), b""):
                        file_hash.update(block)
                sha = file_hash.hexdigest()
            seen[key] = [info.st_size, info.st_mtime, sha]
            digest.update(f"{number}:{path.relative_to(folder).as_posix()}:{sha}\n".encode())
    return digest.hexdigest(), seen


def check_sizes(batch_size: int, shard_mb: float) -> None:
    """`voxforge encode`'s --batch-size and --shard-mb, or a `UserError` naming the option."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if shard_mb <= 0:
        raise UserError(f"--shard-mb must be > 0, got {shard_mb}")


def source_key(record: dict[str, Any]) -> str:
    """What a stored item depends on: its source bytes and the prepare settings."""
    text = json.dumps([record.get("sha"), record.get("params")], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_index(folder: str | Path, fmt: str, what: str) -> dict[str, Any]:
    """FOLDER/cache.json, checked to be of format `fmt` (`what` names it in errors)."""
    path = Path(folder) / CACHE_INDEX
    if not path.is_file():
        raise UserError(
            f"{folder}: no {CACHE_INDEX}; write the cache with "
            f"`voxforge encode --model AUTOENCODER --data PREPARED --out {folder}`"
        )
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}); delete it and encode again") from None
    if index.get("format") != fmt:
        raise UserError(f"{path}: not {what} (format {index.get('format')!r})")
    return index


def require_same_encoder(cache: str | Path, recorded: dict[str, Any], folder: str | Path, fix: str) -> None:
    """Refuse a cache whose `recorded` autoencoder (its index entry) is not the files of
    `folder` now, naming both and the command `fix` that re-encodes."""
    sha, _ = files_digest([folder], recorded.get("files"))
    if sha != recorded["sha256"]:
        raise UserError(
            f"{cache} (data.latents): cached with the autoencoder {recorded['path']} "
            f"(sha256 {recorded['sha256'][:12]}), this run's is {folder} ({sha[:12]}); encode again with `{fix}`"
        )


class ShardReader:
    """A cache folder's index and its shards' tensors. Shards are opened on first use
    (memory-mapped) and not pickled, so a DataLoader worker opens its own."""

    def __init__(self, folder: str | Path, index: dict[str, Any]):
        self.folder = Path(folder)
        self.index = index
        self.entries: dict[str, dict[str, Any]] = index["entries"]
        self._open: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}

    def tensor(self, shard: str, name: str) -> Tensor:
        """Tensor `name` of shard `shard` (a `UserError` when the shard file is gone)."""
        handle = self._open.get(shard)
        if handle is None:
            path = self.folder / SHARDS_DIR / shard
            if not path.is_file():
                raise UserError(f"{path} is missing; run `voxforge encode` for {self.folder} again")
            handle = self._open[shard] = safe_open(str(path), framework="pt")
        return handle.get_tensor(name)


def _write_shard(path: Path, tensors: dict[str, Tensor], fmt: str, kind: str) -> None:
    partial = path.with_name(path.name + ".partial")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata={"format": fmt, "kind": kind}
    )
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)


class ShardWriter:
    """Collects one kind's tensors; `flush` writes them as the next numbered shard once they
    reach `max_bytes` (or at the end) and returns the entries it holds."""

    def __init__(self, folder: Path, kind: str, max_bytes: int, fmt: str):
        self.folder, self.kind, self.max_bytes, self.fmt = folder, kind, max_bytes, fmt
        self.tensors: dict[str, Tensor] = {}
        self.entries: list[tuple[str, dict[str, Any]]] = []
        self.size = 0
        numbers = [
            int(m.group(2))
            for p in folder.glob("*.safetensors")
            if (m := _SHARD.match(p.name)) and m.group(1) == kind
        ]
        self.next = max(numbers, default=-1) + 1

    def add(self, item_id: str, tensors: dict[str, Tensor], part: dict[str, Any]) -> None:
        for name, tensor in tensors.items():
            self.tensors[f"{item_id}.{name}"] = tensor
            self.size += tensor.numel() * tensor.element_size()
        self.entries.append((item_id, part))

    def full(self) -> bool:
        return self.size >= self.max_bytes

    def flush(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.entries:
            return []
        name = f"{self.kind}-{self.next:05d}.safetensors"
        _write_shard(self.folder / name, self.tensors, self.fmt, self.kind)
        self.next += 1
        written = [(item_id, {**part, "shard": name}) for item_id, part in self.entries]
        self.tensors, self.entries, self.size = {}, [], 0
        return written
