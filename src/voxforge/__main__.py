"""`python -m voxforge ...` — the same entry point as the `voxforge` console script.

This is also what `torchrun --nproc-per-node N -m voxforge train ...` runs.
"""

from voxforge.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
