"""Runs inside a Python that has `bpy`: render a GLB with Cycles from given cameras.

This file is executed as a script in a subprocess by `voxforge.render.blender` (never
imported by the package): Blender keeps global state, is not fork-safe and may need its
own numpy, so it lives in its own process. It depends only on bpy, numpy and the standard
library.

    python blender_script.py --mesh M.glb --cameras cams.json --out DIR [--samples 128] ...

`cams.json` holds {"width", "height", "cam_to_world": [V][4][4] (Blender world, camera
looking along -Z with +Y up), "lens": [V] (mm for a 32 mm sensor)}. Writes DIR/NNN.png
(RGBA, straight alpha, sRGB with the "Standard" view transform) and DIR/done.json.

Render settings and lights follow TRELLIS's dataset_toolkits/blender_script/render.py
(Cycles, box filter of width 1, one diffuse and one glossy bounce, denoising, a point key
light and two area lights above and below), so this is the TRELLIS-equivalent renderer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _setup_scene(args: argparse.Namespace):
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=args.mesh)
    scene = bpy.context.scene
    scene.render.engine = args.engine
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "8"
    scene.view_settings.view_transform = "Standard"
    if args.engine == "CYCLES":
        cycles = scene.cycles
        cycles.samples = args.samples
        # Settings renamed or dropped across Blender versions are set where they exist.
        for name, value in (
            ("filter_type", "BOX"),
            ("pixel_filter_type", "BOX"),
            ("filter_width", 1),
            ("diffuse_bounces", 1),
            ("glossy_bounces", 1),
            ("transparent_max_bounces", 3),
            ("transmission_bounces", 3),
            ("use_denoising", bool(args.denoise)),
        ):
            if hasattr(cycles, name):
                setattr(cycles, name, value)
        cycles.device = "GPU" if args.device == "GPU" else "CPU"
        if args.device == "GPU":
            prefs = bpy.context.preferences.addons["cycles"].preferences
            for kind in ("OPTIX", "CUDA", "HIP", "METAL", "ONEAPI"):
                try:
                    prefs.compute_device_type = kind
                    break
                except TypeError:
                    continue
            prefs.get_devices()
            for device in prefs.devices:
                device.use = True
    if args.threads > 0:
        scene.render.threads_mode = "FIXED"
        scene.render.threads = args.threads

    def light(name, kind, energy, location, scale=None):
        obj = bpy.data.objects.new(name, bpy.data.lights.new(name, type=kind))
        obj.data.energy = energy
        obj.location = location
        if scale is not None:
            obj.scale = scale
        scene.collection.objects.link(obj)

    light("key", "POINT", 1000, (4, 1, 6))
    light("top", "AREA", 10000, (0, 0, 10), (100, 100, 100))
    light("bottom", "AREA", 1000, (0, 0, -10))
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    camera.data.sensor_fit = "AUTO"
    camera.data.sensor_width = camera.data.sensor_height = 32
    return scene, camera


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mesh", required=True)
    parser.add_argument("--cameras", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--engine", default="CYCLES")
    parser.add_argument("--device", default="CPU", choices=("CPU", "GPU"))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--denoise", type=int, default=1)
    args = parser.parse_args(argv)

    import bpy
    import mathutils  # importable once bpy is

    with open(args.cameras) as handle:
        cams = json.load(handle)
    began = time.perf_counter()
    scene, camera = _setup_scene(args)
    scene.render.resolution_x = int(cams["width"])
    scene.render.resolution_y = int(cams["height"])
    setup_seconds = time.perf_counter() - began
    for index, (matrix, lens) in enumerate(zip(cams["cam_to_world"], cams["lens"])):
        camera.matrix_world = mathutils.Matrix(matrix)
        camera.data.lens = float(lens)
        scene.render.filepath = os.path.join(args.out, f"{index:03d}.png")
        bpy.ops.render.render(write_still=True)
    with open(os.path.join(args.out, "done.json"), "w") as handle:
        json.dump({"views": len(cams["lens"]), "setup_seconds": setup_seconds}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
