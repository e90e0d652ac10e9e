"""(resolution, frames) buckets of the video family and the batch sampler that draws from them.

The bucket table is data, in the spirit of Open-Sora's `bucket_config`: a mapping from a
resolution name to a mapping from a frame count to `[probability, batch size]`,

    {"256px": {1: [1.0, 32], 33: [0.8, 8], 65: [0.5, 4]},
     "128px": {1: [1.0, 64], 33: [1.0, 16], 65: [1.0, 8]}}

A resolution `"<N>px"` (or `N`) holds frames of about N² pixels in the aspect-ratio buckets of
`voxforge.data.image_buckets.bucket_table(N, multiple, max_aspect)`. A clip of `n` frames and W x H
pixels is assigned as Open-Sora does: starting at the largest resolution whose area the clip
reaches (W·H >= approx·N²), its frame bucket there is the largest count T <= n (a one-frame
bucket takes images and one-frame clips only, never a video), and it stays in (N, T) with the
bucket's probability; otherwise it falls to the next lower resolution and tries again. A
clip that falls past the lowest resolution, or fits no bucket at all, is not used
(`no_bucket`): give the lowest resolution probability 1 to keep every clip. Within the
resolution the aspect bucket is the nearest aspect ratio (in log space). The draws come from
a generator seeded by (seed, the clip's id), so an assignment is the same on every run and
on every machine, and a re-run can tell from the manifest alone whether a clip's bucket
changed.

`VideoBucketSampler` batches one bucket at a time, each bucket at its own batch size: an
epoch permutes every bucket's items (a generator seeded by (seed, epoch)), cuts each into
global batches of batch_size x world_size items (the remainder waits for another epoch) and
interleaves them, drawing the bucket of every next batch with a second generator in
proportion to the batches the buckets have left. Rank r takes every world_size-th item of a
global batch, so 1 process at 2B draws what 2 processes at B draw. The generator's state is
part of `state_dict()`, so a sampler restored with `load_state_dict` continues with exactly
the batches the interrupted one would have drawn; built with `(epoch, start_batch)` (the
engine's `Stage.batch_sampler` hook) it replays the draws up to that position, with the same
result.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from voxforge.data.image_buckets import bucket_table, nearest_bucket
from voxforge.errors import UserError

__all__ = [
    "DEFAULT_BUCKETS",
    "VideoBucket",
    "VideoBucketSampler",
    "aspect_tables",
    "assign_bucket",
    "bucket_rng",
    "parse_bucket_config",
    "resolution_side",
]

#: the default table: 256 px, images and clips of 17 to 65 frames
DEFAULT_BUCKETS: dict[str, dict[int, list[float]]] = {
    "256px": {1: [1.0, 32], 17: [1.0, 8], 33: [1.0, 4], 65: [1.0, 2]}
}
_RESOLUTION = re.compile(r"^\s*(\d+)\s*(px)?\s*$", re.IGNORECASE)
MAX_FRAMES_BUCKET = 100_000


class VideoBucket(NamedTuple):
    """One bucket: a resolution name, a frame count and the (width, height) of its aspect."""

    resolution: str
    frames: int
    width: int
    height: int

    @property
    def name(self) -> str:
        return f"{self.resolution}/{self.frames}/{self.width}x{self.height}"

    @classmethod
    def of(cls, value: Any) -> VideoBucket:
        """From a manifest's `bucket` field ({"resolution", "frames", "width", "height"} or a list)."""
        if isinstance(value, Mapping):
            return cls(
                str(value["resolution"]), int(value["frames"]), int(value["width"]), int(value["height"])
            )
        resolution, frames, width, height = value
        return cls(str(resolution), int(frames), int(width), int(height))

    def record(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
        }


def resolution_side(name: str) -> int:
    """The side of a resolution name: "256px" (or "256") -> 256."""
    match = _RESOLUTION.match(str(name))
    if not match:
        raise ValueError(f"resolution {name!r} is not of the form '<N>px' (e.g. '256px')")
    return int(match.group(1))


def parse_bucket_config(value: Any, where: str = "buckets") -> dict[str, dict[int, tuple[float, int]]]:
    """Check and normalize a bucket table: {"<N>px": {frames: (probability, batch size)}}.

    Keys may come from YAML or JSON as ints or strings. Raises ValueError naming the entry.
    """
    if not isinstance(value, Mapping) or not value:
        raise ValueError(
            f"{where}: expected a non-empty mapping of resolution -> {{frames: [probability, batch]}}"
        )
    table: dict[str, dict[int, tuple[float, int]]] = {}
    sides: dict[int, str] = {}
    for raw_name, frames in value.items():
        try:
            side = resolution_side(str(raw_name))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if not 8 <= side <= 8192:
            raise ValueError(f"{where}.{raw_name}: a side of {side} pixels is outside 8-8192")
        name = f"{side}px"
        if side in sides:
            raise ValueError(f"{where}: {raw_name!r} and {sides[side]!r} name the same resolution")
        sides[side] = str(raw_name)
        if not isinstance(frames, Mapping) or not frames:
            raise ValueError(f"{where}.{raw_name}: expected a mapping of frames -> [probability, batch size]")
        entries: dict[int, tuple[float, int]] = {}
        for raw_count, entry in frames.items():
            key = f"{where}.{raw_name}.{raw_count}"
            try:
                count = int(str(raw_count).strip())
            except ValueError:
                raise ValueError(f"{key}: the frame count {raw_count!r} is not an integer") from None
            if not 1 <= count <= MAX_FRAMES_BUCKET:
                raise ValueError(f"{key}: a frame count must be 1-{MAX_FRAMES_BUCKET}, got {count}")
            if not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) != 2:
                raise ValueError(f"{key}: expected [probability, batch size], got {entry!r}")
            probability, batch = entry
            if isinstance(probability, bool) or not isinstance(probability, int | float):
                raise ValueError(f"{key}: the probability {probability!r} is not a number")
            if not 0.0 <= float(probability) <= 1.0:
                raise ValueError(f"{key}: the probability must be in [0, 1], got {probability}")
            if isinstance(batch, bool) or not isinstance(batch, int | float) or float(batch) != int(batch):
                raise ValueError(f"{key}: the batch size {batch!r} is not an integer")
            if int(batch) < 1:
                raise ValueError(f"{key}: the batch size must be >= 1, got {batch}")
            if count in entries:
                raise ValueError(f"{key}: the frame count {count} is listed twice")
            entries[count] = (float(probability), int(batch))
        table[name] = dict(sorted(entries.items()))
    return dict(sorted(table.items(), key=lambda kv: -resolution_side(kv[0])))


def bucket_config_json(table: Mapping[str, Mapping[int, tuple[float, int]]]) -> dict[str, dict[str, list]]:
    """The table as JSON (frame counts as strings, as JSON keys must be)."""
    return {name: {str(t): [p, b] for t, (p, b) in frames.items()} for name, frames in table.items()}


def aspect_tables(
    table: Mapping[str, Any], multiple: int, max_aspect: float
) -> dict[str, list[tuple[int, int]]]:
    """(W, H) aspect buckets of every resolution of the table."""
    tables = {}
    for name in table:
        side = resolution_side(name)
        tables[name] = bucket_table(side, min(multiple, side), max_aspect)
    return tables


def bucket_rng(seed: int, clip_id: str) -> np.random.Generator:
    """The generator of one clip's bucket draws: (seed, the clip's 64-bit id)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(clip_id[:16], 16)])


def _frame_bucket(frames: int, counts: Sequence[int]) -> int | None:
    if frames == 1:
        return 1 if 1 in counts else None
    fitting = [t for t in counts if t != 1 and t <= frames]
    return max(fitting) if fitting else None


def assign_bucket(
    table: Mapping[str, Mapping[int, tuple[float, int]]],
    aspects: Mapping[str, Sequence[tuple[int, int]]],
    frames: int,
    width: int,
    height: int,
    rng: np.random.Generator,
    approx: float = 0.8,
) -> VideoBucket | None:
    """The bucket of a clip of `frames` frames of width x height, or None (see the module docstring)."""
    area = width * height
    names = sorted(table, key=lambda n: -resolution_side(n))
    start = next((i for i, n in enumerate(names) if area >= approx * resolution_side(n) ** 2), None)
    if start is None or frames < 1:
        return None
    for name in names[start:]:
        count = _frame_bucket(frames, list(table[name]))
        if count is None:
            continue
        probability = table[name][count][0]
        if probability >= 1.0 or (probability > 0.0 and rng.random() < probability):
            bucket_width, bucket_height = nearest_bucket(width, height, aspects[name])
            return VideoBucket(name, count, bucket_width, bucket_height)
    return None


# ----------------------------------------------------------------------------------------------
# the batch sampler


class VideoBucketSampler:
    """Batches of one (resolution, frames, aspect) bucket each, at that bucket's batch size.

    `buckets`: each item's bucket (any hashable, e.g. `VideoBucket`); `batch_sizes`: the
    per-rank batch size of every bucket. Deterministic in (seed, epoch), resumable from
    `state_dict()` or from (epoch, start_batch), split across ranks (module docstring).
    Buckets with fewer items than one global batch are never drawn (`unused` counts them).
    `state_dict()` describes the position after the batches the iterator has handed out (a
    DataLoader with prefetching pulls ahead: the engine resumes from its own count instead).
    """

    def __init__(
        self,
        buckets: Sequence[Any],
        batch_sizes: Mapping[Any, int],
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        start_batch: int = 0,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0-{world_size - 1}")
        self.rank, self.world_size, self.seed, self.shuffle = int(rank), int(world_size), int(seed), shuffle
        groups: dict[Any, list[int]] = {}
        for index, key in enumerate(buckets):
            groups.setdefault(key, []).append(index)
        missing = [k for k in groups if k not in batch_sizes]
        if missing:
            raise ValueError(f"no batch size for the buckets {sorted(map(str, missing))[:5]}")
        self.batch_sizes = {k: int(batch_sizes[k]) for k in groups}
        self.keys = sorted(
            (k for k, v in groups.items() if len(v) >= self.batch_sizes[k] * self.world_size), key=str
        )
        self.groups = {k: np.asarray(groups[k], dtype=np.int64) for k in self.keys}
        self.unused = sum(len(v) for k, v in groups.items() if k not in self.groups)
        if not self.keys:
            largest = max(groups.items(), key=lambda kv: len(kv[1]), default=None)
            detail = (
                f"the largest, {largest[0]}, holds {len(largest[1])} clips for a global batch of "
                f"{self.batch_sizes[largest[0]]} x {self.world_size} processes"
                if largest
                else "the dataset is empty"
            )
            raise UserError(f"no bucket has a full batch: {detail}; lower its batch size in the bucket table")
        self.counts = [len(self.groups[k]) // (self.batch_sizes[k] * self.world_size) for k in self.keys]
        self.batches_per_epoch = sum(self.counts)
        self._start(int(epoch))
        for _ in range(int(start_batch)):
            self._draw()

    # --- the epoch's plan -----------------------------------------------------------
    def _start(self, epoch: int) -> None:
        """Permute each bucket (seeded by (seed, epoch)) and reset the bucket generator."""
        self.epoch, self.batch = epoch, 0
        order = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, 0])
        self._members = []
        for key, count in zip(self.keys, self.counts):
            members = self.groups[key]
            if self.shuffle:
                members = members[order.permutation(len(members))]
            size = self.batch_sizes[key] * self.world_size
            self._members.append(members[: count * size].reshape(count, size))
        self._rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, 1])
        self._taken = [0] * len(self.keys)

    def _draw(self) -> tuple[Any, np.ndarray]:
        """The next global batch of the epoch: (bucket, item indices); advances the state."""
        left = np.asarray([c - t for c, t in zip(self.counts, self._taken)], dtype=np.float64)
        if left.sum() <= 0:
            raise StopIteration
        if self.shuffle:
            pick = int(np.searchsorted(np.cumsum(left), self._rng.random() * left.sum(), side="right"))
            pick = min(pick, len(left) - 1)
            while left[pick] <= 0:  # a draw on the boundary of an empty bucket
                pick -= 1
        else:
            pick = int(np.flatnonzero(left)[0])
        batch = self._members[pick][self._taken[pick]]
        self._taken[pick] += 1
        self.batch += 1
        return self.keys[pick], batch

    # --- the sampler protocol -------------------------------------------------------
    def __len__(self) -> int:
        return self.batches_per_epoch - self.batch

    def set_epoch(self, epoch: int) -> None:
        self._start(int(epoch))

    def __iter__(self) -> Iterator[list[int]]:
        """The rest of this epoch (this rank's share of each batch); then the state moves to the next."""
        while self.batch < self.batches_per_epoch:
            _, batch = self._draw()
            yield batch[self.rank :: self.world_size].tolist()
        self._start(self.epoch + 1)

    def epoch_buckets(self, epoch: int) -> list[Any]:
        """The bucket of every batch of an epoch, in order (without changing this sampler's state)."""
        probe = VideoBucketSampler.__new__(VideoBucketSampler)
        probe.__dict__.update(self.__dict__)
        probe._start(epoch)
        return [probe._draw()[0] for _ in range(self.batches_per_epoch)]

    def batch_size_of(self, bucket: Any) -> int:
        return self.batch_sizes[bucket]

    def state_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able): seed, epoch, batch, each bucket's batches taken, the generator state."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "batch": self.batch,
            "taken": list(self._taken),
            "buckets": [str(k) for k in self.keys],
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where the sampler that wrote `state` stood."""
        if int(state["seed"]) != self.seed or list(state["buckets"]) != [str(k) for k in self.keys]:
            raise ValueError(
                "this sampler state belongs to another seed or another set of buckets; "
                "it cannot be restored here"
            )
        taken = [int(v) for v in state["taken"]]
        if len(taken) != len(self.keys) or any(not 0 <= t <= c for t, c in zip(taken, self.counts)):
            raise ValueError(
                f"sampler state: batches taken {taken} do not fit the buckets' counts {self.counts}"
            )
        if sum(taken) != int(state["batch"]):
            raise ValueError(
                f"sampler state: batch {state['batch']} is not the sum of the batches taken {taken}"
            )
        self._start(int(state["epoch"]))
        self._taken, self.batch = taken, int(state["batch"])
        self._rng.bit_generator.state = dict(state["rng"])
