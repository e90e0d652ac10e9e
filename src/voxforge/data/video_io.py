"""Reading untrusted video files with PyAV: probe, limits, frames at a bucket's size.

PyAV (FFmpeg's demuxers and decoders behind a Python API) reads every container and codec a
user is likely to hand over — mp4/mov (H.264, HEVC, AV1, MPEG-4), webm (VP8/VP9/AV1), gif —
so nothing here parses a container itself. What this module adds is the order of the checks,
cheap and certain first, each failure an `AssetError` with a stable reason code:

1. byte size (`empty_file`, `too_large`), before the file is opened;
2. the first bytes against the signatures of the containers we accept: a file that is none of
   them is `not_a_video` (a text file named .mp4), one that is but cannot be opened is
   `corrupt_video` (an mp4 cut before its index);
3. the header: a video stream (`no_video_stream`), its declared frame size against
   `max_frame_pixels` (`video_too_large`) and its declared frame count against `max_frames`
   (`too_many_frames`) — all before a single frame is decoded;
4. the decode, packet by packet: a frame larger than the limit or more frames than the limit
   stop it at once (a header that lies); a packet FFmpeg could not read in full, a decoder
   error after packets that decoded, or fewer frames than the header declares is
   `truncated_video`; a decoder error on the first packet is `corrupt_video`; no frame at
   all (and none declared) is `empty_video`.

`read_clip` decodes once when the container declares its frame count (mp4, mov, gif) and keeps
only the frames it is asked for, each resized (covering the bucket, Lanczos) and
centre-cropped as soon as it is decoded, so memory is that of the stored clip, not of the
source. Containers that do not declare a count (webm) are counted in a first pass. Rotation
metadata (phones) and non-square pixels are applied. Images are read with Pillow behind the
same pixel limit (`voxforge.data.safety.open_checked`) as one-frame clips.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from voxforge.config.core import option
from voxforge.data.safety import Limits, open_checked
from voxforge.errors import MissingDependencyError
from voxforge.representations.mesh import AssetError

__all__ = ["VideoLimits", "Probe", "probe_file", "read_clip", "frame_indices", "cover_crop", "require_av"]

#: container signatures: (offset, bytes)
SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"wide"), (4, b"free"), (4, b"skip"),  # mp4 / mov
    (0, b"\x1a\x45\xdf\xa3"),  # matroska / webm
    (0, b"GIF87a"), (0, b"GIF89a"),
    (0, b"RIFF"),  # avi
)  # fmt: skip
FRAME_SAMPLING = ("centre", "start", "spread")


@dataclass
class VideoLimits:
    """Limits on one video (all checked before or while decoding, never after)."""

    max_file_bytes: int = option(4 * 2**30, ge=1, help="largest video or image file read")
    max_frame_pixels: int = option(
        4096 * 4096, ge=1, help="declared (and decoded) pixels per frame above which a file fails"
    )
    max_frames: int = option(20_000, ge=1, help="declared (or decoded) frame count above which a file fails")
    max_archive_bytes: int = option(64 * 2**30, ge=1, help="total uncompressed size of one archive")
    max_archive_ratio: float = option(200.0, gt=1, help="largest compression ratio of a zip member")
    max_archive_members: int = option(100_000, ge=1, help="most members in one archive")

    def archive(self) -> Limits:
        """The archive limits in the form `voxforge.data.safety` uses."""
        return Limits(
            max_file_bytes=self.max_file_bytes,
            max_archive_bytes=self.max_archive_bytes,
            max_archive_ratio=self.max_archive_ratio,
            max_archive_members=self.max_archive_members,
            max_texture_pixels=self.max_frame_pixels,
        )


@dataclass
class Probe:
    """What a file holds, as decoded (not as declared)."""

    kind: str  # "video" or "image"
    frames: int
    width: int  # display size: rotation and pixel aspect applied
    height: int
    fps: float | None
    duration: float | None  # seconds
    codec: str
    declared_frames: int  # what the header said (0: not declared)
    rotation: int = 0  # degrees counter-clockwise applied to every frame

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "frames": self.frames, "width": self.width, "height": self.height,
            "fps": self.fps, "duration": self.duration, "codec": self.codec,
            "declared_frames": self.declared_frames, "rotation": self.rotation,
        }  # fmt: skip


def require_av() -> Any:
    """The `av` module, or a MissingDependencyError that names the extra."""
    try:
        import av  # optional dependency (the `video` extra)
    except ImportError:
        raise MissingDependencyError("av", "video", "decoding and writing videos") from None
    return av


def check_size(path: Path, name: str, limits: VideoLimits) -> int:
    size = path.stat().st_size
    if size == 0:
        raise AssetError("empty_file", f"{name} is empty")
    if size > limits.max_file_bytes:
        raise AssetError("too_large", f"{name} has {size} bytes, over the limit {limits.max_file_bytes}")
    return size


def _signature_known(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(16)
    return any(head[offset : offset + len(magic)] == magic for offset, magic in SIGNATURES)


def _rate(stream: Any) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            value = float(rate)
            if math.isfinite(value) and 0 < value < 10_000:
                return value
    return None


class _Video:
    """An opened container with its checked header; `frames()` decodes with the limits applied."""

    def __init__(self, path: Path, name: str, limits: VideoLimits):
        av = require_av()
        self.name, self.limits, self.bytes = name, limits, path.stat().st_size
        known = _signature_known(path)
        try:
            self.container = av.open(str(path), mode="r")
        except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as err:
            if known:
                raise AssetError(
                    "corrupt_video", f"{name} cannot be opened (truncated or damaged): {err}"
                ) from None
            raise AssetError("not_a_video", f"{name} is not a video file this build can read") from None
        try:
            if not self.container.streams.video:
                reason, what = ("corrupt_video", "truncated or damaged") if known else ("no_video_stream", "")
                raise AssetError(
                    reason, f"{name} has no readable video stream" + (f" ({what})" if what else "")
                )
            self.stream = self.container.streams.video[0]
            context = self.stream.codec_context
            if context is None:
                raise AssetError("corrupt_video", f"{name}: its video stream has no decoder parameters")
            self.coded = (int(context.width or 0), int(context.height or 0))
            if self.coded[0] * self.coded[1] > limits.max_frame_pixels:
                raise AssetError(
                    "video_too_large",
                    f"{name} declares {self.coded[0]}x{self.coded[1]} frames, over the limit of "
                    f"{limits.max_frame_pixels} pixels per frame",
                )
            self.declared = max(0, int(self.stream.frames or 0))
            if self.declared > limits.max_frames:
                raise AssetError(
                    "too_many_frames",
                    f"{name} declares {self.declared} frames, over the limit {limits.max_frames}",
                )
            self.codec = str(context.name or "")
            self.fps = _rate(self.stream)
            duration = None
            if self.stream.duration and self.stream.time_base:
                duration = float(self.stream.duration * self.stream.time_base)
            elif self.container.duration:
                duration = float(self.container.duration) / 1_000_000
            self.duration = duration if duration and math.isfinite(duration) and duration > 0 else None
            sar = self.stream.sample_aspect_ratio or context.sample_aspect_ratio
            self.sar = Fraction(sar) if sar and Fraction(sar) > 0 else Fraction(1)
        except BaseException:
            self.container.close()
            raise

    def close(self) -> None:
        self.container.close()

    def frames(self) -> Any:
        """Decoded frames, checked one by one (size, count); decoder errors become AssetErrors."""
        av = require_av()
        count = packets = 0
        demuxer = self.container.demux(self.stream)  # ends with an empty packet that flushes the decoder
        while True:
            try:
                packet = next(demuxer)
                # FFmpeg flags a packet it could not read in full: the file is cut short
                cut = packet.size and packet.pos is not None and packet.pos + packet.size > self.bytes
                if cut or getattr(packet, "is_corrupt", False):
                    raise AssetError(
                        "truncated_video",
                        f"{self.name} is cut short: packet {packets + 1} is incomplete ({self.bytes} bytes "
                        f"in the file), after {count} frames",
                    )
                decoded = packet.decode()
            except StopIteration:
                return
            except (av.error.FFmpegError, EOFError, OSError, ValueError) as err:
                # data that stops after packets that decoded is a cut file; none at all, a damaged one
                reason = "truncated_video" if packets else "corrupt_video"
                raise AssetError(
                    reason, f"{self.name}: decoding stopped after {count} frames ({err})"
                ) from None
            packets += 1
            for frame in decoded:
                count += 1
                if count > self.limits.max_frames:
                    raise AssetError(
                        "too_many_frames",
                        f"{self.name} has more than {self.limits.max_frames} frames (the limit)",
                    )
                if frame.width * frame.height > self.limits.max_frame_pixels:
                    raise AssetError(
                        "video_too_large",
                        f"{self.name}: frame {count} is {frame.width}x{frame.height}, over the pixel limit",
                    )
                yield frame

    def display_size(self, rotation: int) -> tuple[int, int]:
        width = max(1, round(self.coded[0] * self.sar)) if self.sar != 1 else self.coded[0]
        height = self.coded[1]
        return (height, width) if rotation % 180 else (width, height)


def _rotation(frame: Any) -> int:
    """Counter-clockwise degrees (a multiple of 90) that display the frame upright."""
    try:
        degrees = float(frame.rotation or 0)
    except (AttributeError, TypeError, ValueError):
        return 0
    return int(round(degrees / 90.0)) % 4 * 90


def cover_crop(rgb: np.ndarray, display: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """[H, W, 3] uint8 (shown at `display` (W, H)) resized to cover `size` (W, H), centre-cropped."""
    from PIL import Image

    width, height = size
    scale = max(width / display[0], height / display[1])
    cover = (
        max(width, math.ceil(display[0] * scale - 1e-6)),
        max(height, math.ceil(display[1] * scale - 1e-6)),
    )
    image = Image.fromarray(rgb)
    if image.size != cover:
        image = image.resize(cover, Image.Resampling.LANCZOS, reducing_gap=3.0 if scale < 0.5 else None)
    left, top = (cover[0] - width) // 2, (cover[1] - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)), dtype=np.uint8)


def frame_indices(total: int, count: int, sampling: str = "centre") -> list[int]:
    """Which `count` of `total` frames a clip keeps: a centred or leading window, or spread evenly."""
    if not 1 <= count <= total:
        raise ValueError(f"cannot take {count} frames of {total}")
    if sampling == "spread":
        return [int(v) for v in np.linspace(0, total - 1, count).round()]
    first = 0 if sampling == "start" else (total - count) // 2
    return list(range(first, first + count))


def _rgb(frame: Any, rotation: int) -> np.ndarray:
    array = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(array, rotation // 90)) if rotation else array


def probe_video(path: Path, name: str, limits: VideoLimits) -> Probe:
    """Decode every frame (nothing kept) and report what the file holds."""
    check_size(path, name, limits)
    video = _Video(path, name, limits)
    try:
        count, rotation = 0, 0
        for frame in video.frames():
            if count == 0:
                rotation = _rotation(frame)
            count += 1
        return _probe_of(video, count, rotation)
    finally:
        video.close()


def _probe_of(video: _Video, count: int, rotation: int) -> Probe:
    if count == 0 and not video.declared:
        raise AssetError("empty_video", f"{video.name} holds no decodable frame")
    if video.declared and count < video.declared:
        raise AssetError(
            "truncated_video",
            f"{video.name}: {count} of the {video.declared} declared frames decode (truncated)",
        )
    width, height = video.display_size(rotation)
    duration = video.duration if video.duration else (count / video.fps if video.fps else None)
    return Probe("video", count, width, height, video.fps, duration, video.codec, video.declared, rotation)


def read_clip(
    path: Path,
    name: str,
    limits: VideoLimits,
    choose: Callable[[Probe], tuple[Sequence[int], tuple[int, int]] | None],
) -> tuple[Probe, np.ndarray | None]:
    """Probe a video and keep the frames `choose(probe)` names, at its (W, H): [T, H, W, 3] uint8.

    `choose` returns (frame indices, size) or None (keep nothing: the probe alone). One decode
    when the container declares its frame count and it proves right; two otherwise.
    """
    check_size(path, name, limits)
    video = _Video(path, name, limits)
    try:
        if not video.declared:
            video.close()
            probe = probe_video(path, name, limits)
            return probe, _decode_chosen(path, name, limits, probe, choose(probe))
        planned = Probe(
            "video",
            video.declared,
            *video.display_size(0),
            video.fps,
            video.duration,
            video.codec,
            video.declared,
        )
        count, rotation, kept = 0, 0, {}
        plan, wanted = None, set()
        for frame in video.frames():
            if count == 0:
                rotation = _rotation(frame)
                planned.width, planned.height = video.display_size(rotation)
                planned.rotation = rotation
                plan = choose(planned)
                wanted = set(plan[0]) if plan else set()
            if count in wanted:
                kept[count] = cover_crop(_rgb(frame, rotation), (planned.width, planned.height), plan[1])
            count += 1
        probe = _probe_of(video, count, rotation)
    finally:
        video.close()
    if count != video.declared:  # more frames than declared: plan again on the true count
        return probe, _decode_chosen(path, name, limits, probe, choose(probe))
    if plan is None:
        return probe, None
    return probe, np.stack([kept[i] for i in plan[0]])


def _decode_chosen(
    path: Path,
    name: str,
    limits: VideoLimits,
    probe: Probe,
    plan: tuple[Sequence[int], tuple[int, int]] | None,
) -> np.ndarray | None:
    if plan is None:
        return None
    indices, size = plan
    wanted, kept, last = set(indices), {}, max(indices)
    video = _Video(path, name, limits)
    try:
        for index, frame in enumerate(video.frames()):
            if index in wanted:
                kept[index] = cover_crop(_rgb(frame, probe.rotation), (probe.width, probe.height), size)
            if index >= last:
                break
    finally:
        video.close()
    missing = [i for i in indices if i not in kept]
    if missing:
        raise AssetError("truncated_video", f"{name}: frame {missing[0]} did not decode on the second pass")
    return np.stack([kept[i] for i in indices])


def read_image_frame(
    path: Path, name: str, limits: VideoLimits, background: Sequence[int] = (255, 255, 255)
) -> tuple[Probe, np.ndarray]:
    """An image as a one-frame clip: (probe, [H, W, 3] uint8), EXIF orientation applied."""
    from PIL import Image, ImageOps

    check_size(path, name, limits)
    data = path.read_bytes()
    try:
        image = open_checked(data, name, limits.archive())
    except AssetError as err:
        if err.reason == "image_too_large":
            raise AssetError(
                "video_too_large",
                f"{name} declares more than {limits.max_frame_pixels} pixels (possible decompression bomb)",
            ) from None
        raise AssetError("not_an_image", f"{name} is not a readable image") from None
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            flat = Image.new("RGBA", rgba.size, (*background, 255))
            flat.alpha_composite(rgba)
            image = flat
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            values = np.asarray(image, dtype=np.float64)
            values = (
                values * 255.0 if image.mode == "F" and values.max(initial=0.0) <= 1.0 else values / 257.0
            )
            image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
        raise AssetError("corrupt_image", f"{name} cannot be decoded (truncated or corrupt): {err}") from None
    height, width = rgb.shape[:2]
    codec = str(getattr(image, "format", None) or path.suffix.lstrip(".").lower())
    return Probe("image", 1, width, height, None, None, codec, 1), rgb


def probe_file(path: Path, name: str, limits: VideoLimits, is_image: bool) -> Probe:
    """The probe of a video or image file (decodes it all; nothing is kept)."""
    if is_image:
        return read_image_frame(path, name, limits)[0]
    return probe_video(path, name, limits)
