"""`voxforge import trellis SRC [--out MODEL_DIR] [--dinov2 PATH] [--verify GOLDEN_DIR] [--json]`.

SRC is a folder laid out like a TRELLIS-image-large download (`pipeline.json`,
`ckpts/NAME.json` + `.safetensors`). `--out` converts it into a voxforge model folder
(`voxforge.trellis.importer`); `--verify` runs every model on the inputs stored in a golden
folder and prints, per output, the largest absolute and relative error against the stored
reference and whether it is within tolerance (`voxforge.trellis.verify`). With both, the
imported folder is what gets verified, so the check covers the files a user will load.
Exit status: 0 when everything passes, 1 when an output is out of tolerance, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import pretrained models from other projects (trellis)")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    t = kinds.add_parser(
        "trellis",
        help="a TRELLIS-image-large folder -> a voxforge model folder; --verify against golden outputs",
        description="Convert (and/or verify) a folder laid out like a TRELLIS-image-large download.",
    )
    t.add_argument("src", metavar="SRC", help="TRELLIS folder (pipeline.json, ckpts/)")
    t.add_argument("--out", metavar="MODEL_DIR", help="write the converted voxforge model folder here")
    t.add_argument(
        "--dinov2",
        metavar="PATH",
        help="DINOv2 ViT-L/14-reg weights: .safetensors/.pth (facebookresearch keys) or a transformers folder "
        "(default: a dinov2_*.safetensors beside pipeline.json, then the torch-hub cache)",
    )
    t.add_argument(
        "--verify", metavar="GOLDEN_DIR", help="compare every model's outputs with this golden folder"
    )
    t.add_argument("--json", action="store_true", help="print the verification as JSON")
    t.set_defaults(func=run_trellis)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def run_trellis(args: argparse.Namespace) -> int:
    from voxforge.errors import UserError
    from voxforge.trellis.importer import import_trellis, load_model_folder
    from voxforge.trellis.verify import format_rows, rows_json, verify_folder

    if not args.out and not args.verify:
        raise UserError("pass --out MODEL_DIR to import, --verify GOLDEN_DIR to check, or both")
    target = Path(args.src)
    if args.out:
        target = import_trellis(args.src, args.out, dinov2=args.dinov2)
        print(f"voxforge import: {args.src} -> {target}", file=sys.stderr)
        skipped = json.loads((target / "model.json").read_text()).get("skipped", {})
        for stem, cls in skipped.items():
            print(
                f"voxforge import: note: {stem} ({cls}) is not imported: voxforge has no module for it",
                file=sys.stderr,
            )
    if not args.verify:
        return 0
    models = load_model_folder(target, dinov2=args.dinov2).by_class()
    rows, unknown = verify_folder(target, args.verify, models=models)
    if args.json:
        print(json.dumps(rows_json(rows, unknown), indent=1))
    else:
        print(format_rows(rows, unknown))
    return 0 if rows and all(r.passed for r in rows) else 1
