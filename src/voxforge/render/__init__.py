"""Rendering: cameras (`cameras`), the textured-mesh renderer (`mesh_raster`, with the
Blender Cycles backend in `blender`), and the 3D Gaussian rasterizer (`gaussians`).

Submodules are imported on use (`from voxforge.render.mesh_raster import render_mesh`), so
importing `voxforge.render` stays cheap.
"""
