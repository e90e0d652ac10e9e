"""Ingest: any supported mesh file -> a clean, normalized `TexturedMesh`, or a reason why not.

Formats: glTF 2.0 (.glb, .gltf with external .bin and images) through voxforge's validating
reader (`voxforge.data.gltf`); OBJ (+MTL and textures), PLY, STL and OFF through trimesh, fed
from bytes so trimesh never opens a path itself, with a resolver that reads referenced files
only inside the source folder. Zip archives are expanded by `voxforge.data.archive`.

Order of the checks (cheap and certain first):
1. size and sniffing of the raw bytes: `empty_file`, `too_large`, `not_a_mesh` (binary junk in a
   text format, a wrong magic number), before any parser runs;
2. parsing, with every failure mapped to a reason code. A loose end in the *appearance* costs
   the asset its material, not its geometry (as in Blender and trimesh): an `.mtl` that is not
   there, a `usemtl` naming a material the `.mtl` does not define, a texture image that is not
   there, a glTF material naming a texture or image that does not exist. The geometry loads
   with a default material (white; for a missing image, the material without its texture)
   and a warning with its own reason code (`WARNING_REASONS`). A texture that cannot be
   decoded (`bad_image`) fails the asset unless `allow_missing_textures`, which turns it into
   such a warning too. Hostile references stay failures: paths leaving the source folder
   (`path_outside_source`), decompression bombs (`image_too_large`), oversized files;
3. cleaning: non-finite vertices used by a face -> `non_finite`; indices out of range ->
   `bad_indices`; degenerate triangles (repeated index or zero area) are dropped and an asset
   with nothing else -> `degenerate`; no faces at all -> `point_cloud` / `no_geometry`; more
   than `max_faces` -> `too_many_faces`; NaN colours or UVs are repaired with a warning;
4. normalization to the DESIGN.md object frame (bbox centre, longest side 1).

Scene graphs are flattened with their transforms; vertex colours and textures are kept.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxforge.data.gltf import read_gltf
from voxforge.data.safety import Limits, SourceReader, check_image_header, decode_image
from voxforge.representations.mesh import AssetError, MeshPart, TexturedMesh

MESH_EXTENSIONS = {".obj", ".glb", ".gltf", ".ply", ".stl", ".off"}
ARCHIVE_EXTENSIONS = {".zip"}
TEXT_FORMATS = {".obj", ".gltf", ".off"}

# Reason codes of warnings (the asset is used). `missing_material` and `missing_texture` were
# failures in older versions; an ingest a manifest recorded as failed with one of them is
# retried (`RECOVERED_FAILURES`).
WARNING_REASONS = {
    "missing_material": "an .mtl file named by the OBJ is not there: default material",
    "unknown_material": "usemtl names a material the .mtl does not define: default material",
    "missing_texture": "a texture image is not there: the material without its texture",
    "unknown_texture": "a glTF material names a texture or image that does not exist: untextured",
    "bad_image": "a texture that cannot be decoded (only with --allow-missing-textures): untextured",
    "degenerate_faces": "triangles with a repeated index or zero area were dropped",
    "repaired_uv": "NaN/Inf texture coordinates were replaced by 0",
    "repaired_colors": "NaN/Inf vertex colours were replaced by white",
}
RECOVERED_FAILURES = {"missing_material", "missing_texture"}
_MATERIAL_PROBLEMS = {"missing_material", "unknown_material", "missing_texture", "unknown_texture"}


class WarningLog:
    """The warnings of one asset: a message each and the reason code it is counted under."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.reasons: list[str] = []  # one per message

    def add(self, reason: str, message: str) -> None:
        if message not in self.messages:  # e.g. one missing image shared by several parts
            self.messages.append(message)
            self.reasons.append(reason)


def tolerated(error: AssetError, allow_missing_textures: bool) -> bool:
    """Whether a reference problem becomes a warning rather than the asset's failure."""
    return error.reason in _MATERIAL_PROBLEMS or (error.reason == "bad_image" and allow_missing_textures)


@dataclass
class IngestResult:
    mesh: TexturedMesh  # normalized
    warnings: list[str] = field(default_factory=list)  # messages
    stats: dict[str, Any] = field(default_factory=dict)
    warning_reasons: list[str] = field(default_factory=list)  # one per message, WARNING_REASONS


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sniff(data: bytes, suffix: str, name: str) -> None:
    """Reject bytes that cannot be the claimed format before a parser sees them."""
    if not data.strip(b" \t\r\n\x00"):
        raise AssetError("empty_file", f"{name} is empty")
    head = data[:4096]
    if suffix in TEXT_FORMATS and b"\x00" in head:
        raise AssetError("not_a_mesh", f"{name} has binary content but {suffix} is a text format")
    if suffix == ".glb" and data[:4] != b"glTF":
        raise AssetError("not_a_mesh", f"{name} does not start with the GLB magic 'glTF'")
    if suffix == ".ply" and not data.lstrip()[:3] == b"ply":
        raise AssetError("not_a_mesh", f"{name} does not start with the PLY magic 'ply'")
    if suffix == ".off":
        first = next((ln for ln in head.splitlines() if ln.strip() and not ln.startswith(b"#")), b"")
        if not (first.strip()[:3].endswith(b"OFF") or first.strip()[:1].isdigit()):
            raise AssetError("not_a_mesh", f"{name} does not start with an OFF header")
    if suffix == ".stl" and head.lstrip()[:5].lower() != b"solid":
        if len(data) < 84:
            raise AssetError("not_a_mesh", f"{name} is too short for a binary STL")
        count = int.from_bytes(data[80:84], "little")
        if 84 + 50 * count != len(data):
            raise AssetError(
                "corrupt_file",
                f"{name} is a binary STL that declares {count} triangles ({84 + 50 * count} bytes) "
                f"but has {len(data)} bytes",
            )
    if suffix == ".obj" and not any(line.lstrip().startswith(b"v ") for line in data[: 1 << 20].splitlines()):
        raise AssetError("no_geometry", f"{name} has no 'v' vertex lines in its first megabyte")


class _ContainedResolver:
    """A trimesh resolver that reads through a SourceReader and remembers every failure.

    trimesh swallows exceptions raised while it loads MTL files and textures, so the failures
    are collected here and re-raised by the caller after parsing.
    """

    def __init__(self, reader: SourceReader, path: Path):
        self.reader, self.path = reader, path
        self.errors: list[AssetError] = []
        self.materials: set[str] = set()  # names defined by the .mtl files read

    def get(self, name: str) -> bytes:
        what = "material" if name.lower().endswith(".mtl") else "texture"
        try:
            data = self.reader.read(name, self.path, what)
            if what == "texture":
                check_image_header(data, name, self.reader.limits)
            else:  # the names as trimesh's parse_mtl keys them
                for line in data.decode("utf-8", "replace").splitlines():
                    words = line.split()
                    if len(words) > 1 and words[0].lower() == "newmtl":
                        self.materials.add(" ".join(words[1:]))
            return data
        except AssetError as err:
            self.errors.append(err)
            raise OSError(str(err)) from None

    __getitem__ = get

    def namespaced(self, namespace: str) -> _ContainedResolver:
        return self

    def keys(self) -> list[str]:
        return []

    def write(self, name: str, data: bytes) -> None:
        raise AssetError("path_outside_source", "ingest never writes next to source files")


def _pil_texture(image: Any, limits: Limits) -> np.ndarray:
    """A PIL image that passed the header check -> [H, W, 4] uint8 within max_texture_size."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # re-encode: decode_image applies all limits in one place
    return decode_image(buffer.getvalue(), image.info.get("file_path", "texture"), limits)


def _trimesh_parts(
    scene: Any, limits: Limits, materials: set[str] | None, log: WarningLog, allow_bad_textures: bool
) -> tuple[list[MeshPart], int]:
    """Flatten a trimesh Scene with transforms; returns parts and the number of loose points.

    `materials`: for an OBJ, the material names its `.mtl` defines (None for other formats).
    Where an OBJ has no `.mtl`, it is missing, or `usemtl` names none of its materials,
    trimesh makes up a grey stand-in material; voxforge uses its default material instead,
    white, so such a file looks like an STL.
    """
    import trimesh

    parts, points = [], 0
    textures: dict[int, np.ndarray] = {}
    for node in scene.graph.nodes_geometry:
        matrix, geometry_name = scene.graph[node]
        geometry = scene.geometry[geometry_name]
        if isinstance(geometry, trimesh.PointCloud):
            points += len(geometry.vertices)
            continue
        if not isinstance(geometry, trimesh.Trimesh):
            continue
        vertices = np.asarray(geometry.vertices, dtype=np.float64)
        faces = np.asarray(geometry.faces, dtype=np.int64).reshape(-1, 3)
        if len(faces) == 0:
            points += len(vertices)
            continue
        with np.errstate(invalid="ignore", over="ignore"):  # NaN vertices are judged in clean()
            vertices = vertices @ matrix[:3, :3].T + matrix[:3, 3]
        if np.linalg.det(matrix[:3, :3]) < 0:
            faces = faces[:, ::-1]
        visual = geometry.visual
        uv = colors = texture = None
        base = np.ones(4, np.float32)
        material = getattr(visual, "material", None)
        if visual.kind == "texture" and (materials is None or getattr(material, "name", None) in materials):
            image = getattr(material, "image", None) or getattr(material, "baseColorTexture", None)
            diffuse = getattr(material, "diffuse", None)
            if diffuse is None:
                diffuse = getattr(material, "baseColorFactor", None)
            if diffuse is not None:
                base = np.asarray(diffuse, dtype=np.float32).reshape(-1)[:4] / 255.0
                if len(base) == 3:
                    base = np.append(base, 1.0).astype(np.float32)
            if image is not None and getattr(visual, "uv", None) is not None:
                key = id(image)
                if key not in textures:
                    try:
                        textures[key] = _pil_texture(image, limits)
                    except AssetError as err:
                        if not (err.reason == "bad_image" and allow_bad_textures):
                            raise
                        log.add("bad_image", f"{err}; loaded untextured")
                        textures[key] = None
                texture = textures[key]
                flat = texture.reshape(-1, 4) if texture is not None else None
                if flat is not None and (flat == flat[0]).all():  # a constant image is a colour
                    base = base * flat[0].astype(np.float32) / 255.0
                    texture = None
                elif texture is not None:
                    uv = np.asarray(visual.uv, dtype=np.float32)[:, :2].copy()
                    uv[:, 1] = 1.0 - uv[:, 1]  # OBJ/trimesh origin bottom-left -> glTF top-left
        elif visual.kind == "vertex":
            colors = np.asarray(visual.vertex_colors, dtype=np.float32) / 255.0
        elif visual.kind == "face":
            face_colors = np.asarray(visual.face_colors, dtype=np.float32) / 255.0
            vertices = vertices[faces].reshape(-1, 3)  # unshare vertices to carry face colours
            colors = np.repeat(face_colors, 3, axis=0)
            faces = np.arange(len(vertices), dtype=np.int64).reshape(-1, 3)
        parts.append(MeshPart(vertices, faces, uv=uv, vertex_colors=colors, texture=texture, base_color=base))
    return parts, points


def _load_trimesh(
    data: bytes, suffix: str, path: Path, reader: SourceReader, allow_missing: bool, log: WarningLog
) -> tuple[Any, set[str] | None]:
    """A trimesh Scene and, for an OBJ, the material names its .mtl defines (see _trimesh_parts)."""
    import trimesh

    resolver = _ContainedResolver(reader, path)
    try:
        scene = trimesh.load_scene(
            io.BytesIO(data), file_type=suffix.lstrip("."), resolver=resolver, process=False
        )
    except AssetError:
        raise
    except IndexError as err:
        raise AssetError("bad_indices", f"{path.name}: a face refers to a missing vertex ({err})") from None
    except MemoryError:
        raise AssetError("too_large", f"{path.name}: ran out of memory while parsing") from None
    except Exception as err:  # noqa: BLE001 - any parser failure is a property of the file
        raise AssetError("corrupt_file", f"{path.name} cannot be parsed as {suffix}: {err}") from None
    fatal = [error for error in resolver.errors if not tolerated(error, allow_missing)]
    if fatal:
        raise fatal[0]
    consequence = {
        "missing_material": "loaded with the default material",
        "missing_texture": "its material is used without the texture",
        "bad_image": "its material is used without the texture",
    }
    for error in resolver.errors:
        log.add(error.reason, f"{error}; {consequence.get(error.reason, 'loaded untextured')}")
    if suffix != ".obj":
        return scene, None
    text = data.decode("utf-8", "replace")
    if "mtllib" in text and not any(e.reason == "missing_material" for e in resolver.errors):
        named = {
            line[6:].strip() for line in text.splitlines() if line.startswith("usemtl") and line[6:].strip()
        }
        unknown = sorted(named - resolver.materials)
        if unknown:
            log.add(
                "unknown_material",
                f"{path.name}: usemtl names {', '.join(repr(n) for n in unknown[:5])}, not defined by its "
                "material file; loaded with the default material",
            )
    return scene, resolver.materials


def load_source(
    path: Path,
    root: Path,
    limits: Limits,
    *,
    data: bytes | None = None,
    allow_missing_textures: bool = False,
    warnings: WarningLog | None = None,
) -> TexturedMesh:
    """Parse one mesh file (not normalized, not cleaned). Referenced files stay inside `root`.

    Material problems are added to `warnings` (module docstring); `allow_missing_textures`
    also lets undecodable textures through, untextured.
    """
    log = WarningLog() if warnings is None else warnings
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_EXTENSIONS:
        raise AssetError("unsupported", f"{path.name}: extension {suffix!r} is not a supported mesh format")
    reader = SourceReader(root, limits)
    if data is None:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise AssetError(
                "too_large", f"{path.name} has {size} bytes, over the limit {limits.max_file_bytes}"
            )
        data = path.read_bytes()
    sniff(data, suffix, path.name)
    if suffix in (".glb", ".gltf"):
        problems: list[tuple[str, str]] = []
        mesh = read_gltf(
            data,
            name=path.name,
            path=path,
            reader=reader,
            limits=limits,
            warnings=problems,
            allow_bad_textures=allow_missing_textures,
        )
        for reason, message in problems:
            log.add(reason, message)
        return mesh
    scene, materials = _load_trimesh(data, suffix, path, reader, allow_missing_textures, log)
    parts, points = _trimesh_parts(scene, limits, materials, log, allow_missing_textures)
    if not parts:
        if points:
            raise AssetError("point_cloud", f"{path.name} has {points} points but no faces")
        raise AssetError("no_geometry", f"{path.name} contains no triangles")
    return TexturedMesh(parts=parts)


def clean(mesh: TexturedMesh, limits: Limits, warnings: WarningLog, name: str) -> TexturedMesh:
    """Validate and repair a parsed mesh; see the module docstring for the rules."""
    faces_total = mesh.num_faces
    if faces_total > limits.max_faces:
        raise AssetError(
            "too_many_faces", f"{name} has {faces_total} triangles, over the limit {limits.max_faces}"
        )
    parts: list[MeshPart] = []
    degenerate = 0
    for part in mesh.parts:
        nv = len(part.vertices)
        if part.faces.size and (part.faces.min() < 0 or part.faces.max() >= nv):
            raise AssetError(
                "bad_indices",
                f"{name}: face indices span {part.faces.min()}..{part.faces.max()} but there are {nv} vertices",
            )
        if len(part.faces) == 0:
            continue
        used = np.unique(part.faces)
        if not np.isfinite(part.vertices[used]).all():
            raise AssetError("non_finite", f"{name}: vertex coordinates contain NaN or Inf")
        faces = part.faces
        corners = part.vertices[faces].astype(np.float64)  # [F, 3, 3]
        extent = float(np.ptp(part.vertices[used], axis=0).max()) or 1.0
        area2 = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
        repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
        keep = ~repeated & (area2 > (extent * 1e-7) ** 2)
        degenerate += int((~keep).sum())
        faces = faces[keep]
        if len(faces) == 0:
            continue
        # compact: drop unused vertices so NaN ones that no face uses disappear
        used, inverse = np.unique(faces, return_inverse=True)
        faces = inverse.reshape(-1, 3)
        uv = None if part.uv is None else part.uv[used]
        colors = None if part.vertex_colors is None else part.vertex_colors[used]
        if uv is not None and not np.isfinite(uv).all():
            warnings.add("repaired_uv", f"{name}: NaN/Inf texture coordinates replaced by 0")
            uv = np.nan_to_num(uv, nan=0.0, posinf=0.0, neginf=0.0)
        if colors is not None and not np.isfinite(colors).all():
            warnings.add("repaired_colors", f"{name}: NaN/Inf vertex colours replaced by white")
            colors = np.nan_to_num(colors, nan=1.0, posinf=1.0, neginf=0.0)
        if colors is not None:
            colors = colors.clip(0.0, 1.0)
        base = np.nan_to_num(part.base_color, nan=1.0).clip(0.0, 1.0)
        texture = part.texture if uv is not None else None
        parts.append(
            MeshPart(
                part.vertices[used], faces, uv=uv, vertex_colors=colors, texture=texture, base_color=base
            )
        )
    if not parts:
        if degenerate:
            raise AssetError("degenerate", f"{name}: all {degenerate} triangles are degenerate (zero area)")
        raise AssetError("no_geometry", f"{name} contains no triangles")
    if degenerate:
        warnings.add("degenerate_faces", f"{name}: dropped {degenerate} degenerate triangles")
    result = TexturedMesh(parts=parts, extras=dict(mesh.extras))
    for part in result.parts:
        part.check()
    return result


def ingest_file(
    path: Path,
    root: Path,
    limits: Limits | None = None,
    *,
    data: bytes | None = None,
    allow_missing_textures: bool = False,
) -> IngestResult:
    """Load, clean and normalize one mesh file. Raises AssetError with a reason code.

    `allow_missing_textures`: also load an asset whose texture cannot be decoded, untextured
    (missing material and texture files are always warnings, never failures).
    """
    limits = limits or Limits()
    path = Path(path)
    warnings = WarningLog()
    logging.getLogger("trimesh").setLevel(logging.ERROR)
    raw = load_source(
        path, root, limits, data=data, allow_missing_textures=allow_missing_textures, warnings=warnings
    )
    mesh = clean(raw, limits, warnings, path.name)
    lo, hi = mesh.bounds().astype(np.float64)
    normalized = mesh.normalized()
    extent = float((hi - lo).max())
    normalized.extras["normalization"] = {
        "scale": 1.0 / extent,
        "offset": (-(lo + hi) / 2.0 / extent).tolist(),
        "source_bounds": [lo.tolist(), hi.tolist()],
    }
    stats = {
        "faces": normalized.num_faces,
        "vertices": normalized.num_vertices,
        "parts": len(normalized.parts),
        "textured": any(p.texture is not None for p in normalized.parts),
        "vertex_colors": any(p.vertex_colors is not None for p in normalized.parts),
    }
    return IngestResult(
        mesh=normalized, warnings=warnings.messages, stats=stats, warning_reasons=warnings.reasons
    )
