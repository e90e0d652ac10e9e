"""`prepare` orchestration: manifest, resume, duplicates, archives, sharding, containment.

These run ingest + voxels only (render/features are covered end to end in
test_prepare_e2e.py) and in-process (`workers=0`), to stay fast.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.data.hostile import CUBE_OBJ, small_png, write_zip
from voxforge.cli import main as cli_main
from voxforge.data.dataset import PreparedDataset
from voxforge.data.manifest import ManifestView
from voxforge.data.prepare import PrepareConfig, prepare
from voxforge.errors import UserError


def config(**kwargs) -> PrepareConfig:
    values = {"steps": ("ingest", "voxels"), "resolution": 16, "workers": 0, "progress": False}
    values.update(kwargs)
    return PrepareConfig(**values)


def snapshot(folder, exclude=None):
    """Every file (path, size, mtime) under folder, skipping `exclude`."""
    result = {}
    for path in sorted(folder.rglob("*")):
        if exclude is not None and (path == exclude or exclude in path.parents):
            continue
        stat = path.lstat()
        result[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return result


@pytest.fixture
def src(tmp_path, shared_meshes):
    folder = tmp_path / "src"
    (folder / "sub").mkdir(parents=True)
    (folder / "cube.obj").write_text(CUBE_OBJ)
    (folder / "sub" / "cube_copy.obj").write_text(CUBE_OBJ)  # duplicate content
    shutil.copy(shared_meshes / "textured" / "BoxTextured.glb", folder / "box.glb")
    shutil.copy(shared_meshes / "broken" / "points_emptyface.ply", folder / "points.ply")
    (folder / "junk.stl").write_bytes(bytes(range(256)) * 4)
    (folder / "notes.txt").write_text("not a mesh, ignored")
    write_zip(folder / "pack.zip", {"inner/tri.off": b"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"})
    write_zip(folder / "slip.zip", {"../../escape.obj": CUBE_OBJ.encode()})
    (tmp_path / "outside.obj").write_text(CUBE_OBJ.replace("v 1 1 1", "v 2 2 2"))
    os.symlink(tmp_path / "outside.obj", folder / "link.obj")
    return folder


def test_prepare_records_everything_and_resumes(tmp_path, src):
    out = tmp_path / "out"
    before = snapshot(tmp_path, exclude=out)
    summary = prepare(src, out, config())
    assert snapshot(tmp_path, exclude=out) == before, "prepare wrote or touched files outside OUT"

    assert summary["steps"]["ingest"] == {"done": 3, "failed": 2}
    assert summary["steps"]["voxels_16"] == {"done": 3, "failed": 0}
    assert summary["steps"]["expand"] == {"done": 1, "failed": 1}
    reasons = {reason: group["count"] for reason, group in summary["failures"].items()}
    assert reasons == {"point_cloud": 1, "corrupt_file": 1, "path_outside_source": 2}
    assert summary["duplicates"] == [{"source": "sub/cube_copy.obj", "duplicate_of": "cube.obj"}]

    dataset = PreparedDataset(out)
    by_source = {r.source: r for r in dataset.records()}
    assert by_source["link.obj"].status == "failed" and by_source["link.obj"].reason == "path_outside_source"
    assert by_source["pack.zip!inner/tri.off"].status == "done"
    assert by_source["sub/cube_copy.obj"].status == "duplicate"
    assert by_source["points.ply"].failed_step == "ingest"
    assert (
        by_source["slip.zip"].failed_step == "expand"
        and by_source["slip.zip"].reason == "path_outside_source"
    )
    assert "pack.zip" not in by_source
    cube_id = by_source["cube.obj"].id
    import hashlib

    assert cube_id == hashlib.sha256(CUBE_OBJ.encode()).hexdigest()
    assert sorted(dataset.ids(require=("voxels_16",))) == sorted(
        by_source[s].id for s in ("cube.obj", "box.glb", "pack.zip!inner/tri.off")
    )
    assert not (tmp_path / "escape.obj").exists() and not (out / "escape.obj").exists()

    # a second run does nothing
    again = prepare(src, out, config())
    assert again["this_run"] == {"tasks": 0, "failed_steps": 0}
    assert again["steps"] == summary["steps"]


def test_new_settings_add_steps_and_missing_outputs_are_redone(tmp_path, src):
    out = tmp_path / "out"
    prepare(src, out, config())
    dataset = PreparedDataset(out)
    cube = next(r.id for r in dataset.records() if r.source == "cube.obj")
    summary = prepare(src, out, config(resolution=8))
    assert summary["this_run"]["tasks"] == 3
    assert summary["steps"]["voxels_8"]["done"] == 3 and summary["steps"]["voxels_16"]["done"] == 3
    coarse = PreparedDataset(out).voxels(cube, 8)
    assert coarse.max() < 8
    (out / "assets" / cube / "voxels_8.npz").unlink()
    summary = prepare(src, out, config(resolution=8))
    assert summary["this_run"]["tasks"] == 1
    np.testing.assert_array_equal(PreparedDataset(out).voxels(cube, 8), coarse)


def test_retry_failed_after_fixing_the_input(tmp_path):
    from tests.data.test_ingest import textured_gltf

    src = tmp_path / "src"
    src.mkdir()
    (src / "t.png").write_bytes(small_png())
    textured_gltf(src, "a.gltf")
    binary = (src / "a.gltf.bin").read_bytes()
    (src / "a.gltf.bin").unlink()
    out = tmp_path / "out"
    summary = prepare(src, out, config())
    assert "missing_buffer" in summary["failures"]
    (src / "a.gltf.bin").write_bytes(binary)
    assert prepare(src, out, config())["this_run"]["tasks"] == 0  # failures are remembered
    summary = prepare(src, out, config(retry_failed=True))
    assert summary["steps"]["ingest"] == {"done": 1, "failed": 0}
    assert summary["failures"] == {}


def test_sharding_splits_work_without_overlap(tmp_path, src):
    single = prepare(src, tmp_path / "single", config())
    shared = tmp_path / "shared"
    for rank in range(3):
        prepare(src, shared, config(rank=rank, world_size=3))
    files = sorted(p.name for p in shared.glob("manifest*.sqlite"))
    assert files == [f"manifest.rank{r}-of-3.sqlite" for r in range(3)]
    merged = ManifestView(shared).summary()
    assert merged["steps"] == single["steps"]
    assert merged["duplicates"] == single["duplicates"]
    owned = []
    for path in files:
        import sqlite3

        with sqlite3.connect(shared / path) as db:
            owned.append({row[0] for row in db.execute("SELECT id FROM steps WHERE step = 'ingest'")})
    assert sum(len(ids) for ids in owned) == len(set().union(*owned))  # disjoint
    assert set().union(*owned) == {
        asset for asset, steps in ManifestView(tmp_path / "single").steps.items() if "ingest" in steps
    }
    assert set(PreparedDataset(shared).ids()) == set(PreparedDataset(tmp_path / "single").ids())


def test_output_inside_source_is_not_ingested(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "cube.obj").write_text(CUBE_OBJ)
    out = src / "prepared"
    prepare(src, out, config())
    summary = prepare(src, out, config())  # the first run's mesh.glb must not become a source
    assert summary["sources"] == 1


def test_bad_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        prepare(tmp_path / "missing", tmp_path / "out", config())
    (tmp_path / "src").mkdir()
    with pytest.raises(UserError, match="must differ"):
        prepare(tmp_path / "src", tmp_path / "src", config())
    with pytest.raises(UserError, match="inside the output"):
        prepare(tmp_path / "src", tmp_path, config())


@pytest.mark.slow
def test_worker_processes_and_time_limit_end_to_end(tmp_path, src):
    """Real worker processes produce the same records as the in-process mode."""
    in_process = prepare(src, tmp_path / "a", config())
    pooled = prepare(src, tmp_path / "b", config(workers=2, time_limit=120))
    assert pooled["steps"] == in_process["steps"]
    assert pooled["failures"].keys() == in_process["failures"].keys()


def test_cli_prepare_and_status(tmp_path, src, capsys):
    out = tmp_path / "out"
    code = cli_main(
        [
            "data",
            "prepare",
            str(src),
            str(out),
            "--steps",
            "ingest,voxels",
            "--resolution",
            "8",
            "--workers",
            "0",
            "--no-progress",
            "--max-faces",
            "100000",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "point_cloud: 1" in text and "duplicate: sub/cube_copy.obj = cube.obj" in text
    assert cli_main(["data", "status", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["steps"]["voxels_8"] == {"done": 3, "failed": 0}
    assert status["failures"]["point_cloud"]["examples"][0]["source"] == "points.ply"
    assert cli_main(["data", "status", str(out), "--all"]) == 0
    assert "[corrupt_file] junk.stl (ingest)" in capsys.readouterr().out
    assert cli_main(["data", "status", str(tmp_path / "nothing")]) == 2
    assert cli_main(["data", "prepare", str(src), str(out), "--rank", "2", "--world-size", "2"]) == 2


def test_cli_synth(tmp_path, capsys):
    assert cli_main(["data", "synth", str(tmp_path / "s"), "--num", "4", "--seed", "1"]) == 0
    assert "wrote 4 objects" in capsys.readouterr().out
    assert len(list((tmp_path / "s").glob("*.glb"))) == 4
    assert cli_main(["data", "synth", str(tmp_path / "s"), "--num", "0"]) == 2


def loose_ends(folder):
    """The kinds of loose ends found in public meshes; every one must prepare, with a warning."""
    from tests.data.test_ingest import LOOSE_MTL, textured_gltf, uv_cube_obj

    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, mtl) in enumerate(LOOSE_MTL):
        cube = uv_cube_obj(f"mtllib {mtl}\nusemtl Material\n").replace("v 1 1 1", f"v 1 1 {1 + index / 10}")
        (folder / name).write_text(cube)
    (folder / "noimage.mtl").write_text("newmtl mat\nKd 0 1 0\nmap_Kd absent.png\n")
    (folder / "noimage.obj").write_text(
        uv_cube_obj("mtllib noimage.mtl\nusemtl mat\n").replace("v 0 0 0", "v 0 0 -1")
    )
    textured_gltf(folder, "noimage.gltf", image_uri="absent.png")
    return {
        "chair_model.obj": "missing_material",
        "beetle.obj": "missing_material",
        "quadknot.obj": "missing_material",
        "noimage.obj": "missing_texture",
        "noimage.gltf": "missing_texture",
    }


def test_loose_ends_prepare_done_with_warnings(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    expected = loose_ends(src)
    summary = prepare(src, out, config())
    assert summary["failures"] == {}
    assert summary["steps"]["ingest"] == {"done": 5, "failed": 0}
    assert summary["steps"]["voxels_16"] == {"done": 5, "failed": 0}
    assert summary["warned_assets"] == 5
    assert {k: v["count"] for k, v in summary["warnings"].items()} == {
        "missing_material": 3,
        "missing_texture": 2,
    }
    records = {r.source: r for r in PreparedDataset(out).records()}
    assert all(records[name].status == "done" for name in expected)
    # the manifest's own column, one code per message
    import sqlite3

    db = sqlite3.connect(out / "manifest.sqlite")
    rows = dict(db.execute("SELECT id, warning_reasons FROM steps WHERE step = 'ingest'").fetchall())
    db.close()
    for name, reason in expected.items():
        assert json.loads(rows[records[name].id]) == [reason], name
    # status shows them; --json counts them; --all lists each
    assert cli_main(["data", "status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "warnings by reason (5 assets" in text and "missing_material: 3 (ingest: 3)" in text
    assert "'./quadknot.obj.mtl'" in text
    assert cli_main(["data", "status", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["warnings"]["missing_texture"]["count"] == 2 and status["warned_assets"] == 5
    assert cli_main(["data", "status", str(out), "--all"]) == 0
    assert "[missing_material] beetle.obj (ingest): material 'VWBugMesh002.mtl'" in capsys.readouterr().out


def test_old_manifest_is_migrated_and_old_refusals_are_retried(tmp_path):
    """A manifest from before the warnings column, where a missing .mtl was a failure."""
    import sqlite3

    src, out = tmp_path / "src", tmp_path / "out"
    loose_ends(src)
    prepare(src, out, config(steps=("ingest",)))
    db = sqlite3.connect(out / "manifest.sqlite")
    db.execute(
        "UPDATE steps SET status = 'failed', reason = 'missing_material', error = 'old' WHERE step = 'ingest'"
    )
    db.execute("ALTER TABLE steps DROP COLUMN warning_reasons")  # the old schema
    db.commit()
    db.close()
    old = ManifestView(out).summary()  # read-only view of the old file
    assert old["failures"]["missing_material"]["count"] == 5
    summary = prepare(src, out, config())  # no --retry-failed needed: those are warnings now
    assert summary["this_run"]["tasks"] == 5
    assert summary["failures"] == {} and summary["steps"]["ingest"] == {"done": 5, "failed": 0}
    assert summary["warnings"]["missing_material"]["count"] == 3
    db = sqlite3.connect(out / "manifest.sqlite")
    assert "warning_reasons" in {row[1] for row in db.execute("PRAGMA table_info(steps)")}
    db.close()


def test_rows_without_warning_codes_count_as_unclassified(tmp_path):
    from voxforge.data.manifest import Manifest

    with Manifest(tmp_path / "manifest.sqlite") as manifest:
        manifest.record_source("a.obj", "a" * 64)
        manifest.record_step("a" * 64, "ingest", "done", warnings=["something odd"])
    summary = ManifestView(tmp_path).summary()
    assert summary["warnings"]["unclassified"]["examples"] == [
        {"source": "a.obj", "warning": "something odd"}
    ]
