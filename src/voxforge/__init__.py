"""voxforge: train and run generative models of 3D assets from your own meshes.

Importing the package is cheap and has no side effects: heavy modules (torch, trimesh)
are imported by the submodules that need them.
"""

__version__ = "0.1.0"
