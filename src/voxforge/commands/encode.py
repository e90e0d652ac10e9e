"""`voxforge encode --model VAE_RUN --data PREPARED --out LATENTS`: latents for the next stage.

The VAE run's stage picks the encoder (`voxforge.pipelines.encode`: `encode_ss_latents` for
an ss_vae run, `encode_slat_latents` for a slat_vae run), so one command serves both stages.
Every encoder takes `(vae_run, prepared, out, *, device, ema, log, **options)`, writes
`OUT/latents/<id>.npz` and `OUT/latents.json`, skips assets already encoded by the same
checkpoint, and returns a summary dict with `encoded`, `kept` and `total`.

The image family uses the same command (`voxforge.pipelines.image_cache`): `--model` is an
image_ae run or a diffusers AutoencoderDC folder, `--data` a folder of `voxforge data images`,
and OUT becomes a latent cache (`cache.json` + bounded safetensors shards, with the captions'
embeddings when `--text-encoder` names a text encoder), which `data.latents` of an image_flow
recipe reads. The video family too (`voxforge.pipelines.video.cache_video_data`): `--model` is
a video_ae run or a diffusers video autoencoder folder, `--data` a folder of `voxforge data
videos`, and OUT a latent cache of the clips (`voxforge.data.video_cache`) that `data.latents`
of a video_flow recipe reads. It is an option of `encode` rather than a `data` sub-command because, as for the
3D latents, it runs a trained model over a prepared folder and resumes by checkpoint; the
`data` commands load no model.

The encoders (and torch) are imported inside `run`, so `voxforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from voxforge.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="encode a prepared dataset with a trained VAE (latents for the flow stage)",
        description="Write the latents of every prepared asset with the newest checkpoint of a VAE run. "
        "Re-running skips assets already encoded by the same checkpoint.",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="VAE_RUN",
        help="run folder of `voxforge train` (ss_vae, slat_vae, image_ae, video_ae) or a diffusers "
        "AutoencoderDC / video autoencoder folder",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="PREPARED",
        help="folder written by `voxforge data prepare` (`voxforge data images` / `data videos` for an "
        "image / video autoencoder)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="LATENTS",
        help="output folder (latents.json + latents/, or cache.json + shards/)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="assets per forward pass (dense encoders)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    image = p.add_argument_group("image latent cache (an image autoencoder)")
    image.add_argument(
        "--text-encoder",
        metavar="TE",
        help="also cache caption embeddings: an image_flow run, a saved builtin text encoder folder, "
        "or a recipe (name or YAML) whose text_encoder section to use",
    )
    image.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the --text-encoder recipe"
    )
    image.add_argument(
        "--flip", action="store_true", help="cache the mirrored images too (data.augment.flip)"
    )
    image.add_argument("--resolution", type=int, help="encode at this resolution (default: as prepared)")
    cache = p.add_argument_group("image and video latent caches")
    cache.add_argument("--shard-mb", type=float, default=256.0, help="shard size bound in MB (default 256)")
    cache.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="storage dtype"
    )
    p.set_defaults(func=run)


def _cache_model(model: str) -> tuple[str, str] | None:
    """("video", MODEL) for a video autoencoder (a video_ae run or a diffusers folder of a video
    kind), ("image", its diffusers folder) for an image autoencoder (an image_ae run or an
    AutoencoderDC folder), None for anything else (a 3D VAE run)."""
    from voxforge.models.video_ae import KINDS
    from voxforge.stages.image_flow import resolve_autoencoder

    folder = Path(model)
    config = folder / "config.json"
    if config.is_file() and not (folder / "checkpoints").is_dir():
        try:
            class_name = json.loads(config.read_text()).get("_class_name")
        except json.JSONDecodeError as err:
            raise UserError(f"{config} is not valid JSON ({err})") from None
        if class_name in KINDS.values():
            return "video", model
        if class_name != "AutoencoderDC":
            raise UserError(
                f"{model}: a diffusers folder, but not an AutoencoderDC or a video autoencoder "
                f"(its config.json's _class_name is {class_name!r})"
            )
        return "image", resolve_autoencoder(model)
    if (folder / "config.yaml").is_file():
        from voxforge.runs import Run

        stage = Run.open(model).stage
        if stage == "video_ae":
            return "video", model
        if stage == "image_ae":
            return "image", resolve_autoencoder(model)
    return None


def _log(message: str) -> None:
    print(f"voxforge encode: {message}", file=sys.stderr)


def _cache_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments the image and video caches share."""
    from voxforge.train.distributed import resolve_device

    return {
        "batch_size": args.batch_size,
        "shard_mb": args.shard_mb,
        "dtype": args.dtype,
        "device": resolve_device(args.device),
        "log": _log,
    }


def _report(args: argparse.Namespace, summary: dict[str, Any], line: str) -> int:
    """The summary as JSON with --json, else `line` on stderr; exit code 0."""
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        _log(line)
    return 0


def run_video_cache(args: argparse.Namespace) -> int:
    from voxforge.pipelines.video import cache_video_data

    if args.text_encoder or args.overrides or args.flip or args.resolution or args.raw:
        raise UserError(
            "--text-encoder, --flip, --resolution, --raw and overrides are for an image cache or a 3D VAE; "
            f"{args.model} is a video autoencoder (its exported weights, clips as prepared)"
        )
    summary = cache_video_data(args.data, args.out, autoencoder=args.model, **_cache_options(args))
    return _report(
        args,
        summary,
        f"{summary['total']} clips in {args.out}, {summary['shards']} shards "
        f"({summary['encoded']} encoded now, {summary['kept']} kept)",
    )


def _text_encoder(spec: str, overrides: list[str]) -> tuple[Any, str | None]:
    """(TextEncoderConfig, saved builtin folder or None) named by --text-encoder."""
    from voxforge.config.core import from_dict
    from voxforge.models.image import TextEncoderConfig
    from voxforge.recipe import load_recipe
    from voxforge.runs import IMAGE_INFO, Run

    folder = Path(spec)
    if (folder / "config.yaml").is_file() and (folder / IMAGE_INFO).is_file():
        if overrides:
            raise UserError("KEY=VALUE overrides apply to a --text-encoder recipe, not to a run")
        info = Run.open(folder, "image_flow", "--text-encoder").read_info(IMAGE_INFO)
        cfg = from_dict(TextEncoderConfig, info["text_encoder"], source=str(folder / IMAGE_INFO))
        return cfg, info.get("text_encoder_folder") or None
    if (folder / "text_encoder.json").is_file():
        if overrides:
            raise UserError("KEY=VALUE overrides apply to a --text-encoder recipe, not to a saved encoder")
        meta = json.loads((folder / "text_encoder.json").read_text())
        meta.pop("kind", None)
        return from_dict(TextEncoderConfig, {"kind": "builtin", **meta}, source=str(folder)), str(folder)
    recipe = load_recipe(spec, overrides)
    if not hasattr(recipe, "text_encoder"):
        raise UserError(f"--text-encoder {spec}: a {recipe.stage} recipe has no text_encoder section")
    return recipe.text_encoder, None


def run_image_cache(args: argparse.Namespace, autoencoder: str) -> int:
    from voxforge.pipelines.image_cache import cache_image_data

    if args.overrides and not args.text_encoder:
        raise UserError(f"{args.overrides[0]}: KEY=VALUE overrides need --text-encoder RECIPE")
    if args.raw:
        raise UserError(
            "--raw: an image autoencoder is encoded from its exported folder (there is no EMA choice)"
        )
    text_cfg, text_folder = (
        _text_encoder(args.text_encoder, args.overrides) if args.text_encoder else (None, None)
    )
    summary = cache_image_data(
        args.data,
        args.out,
        autoencoder=autoencoder,
        text_encoder=text_cfg,
        text_folder=text_folder,
        resolution=args.resolution,
        flip=args.flip,
        **_cache_options(args),
    )
    latents, text = summary["latents"], summary["text"]
    return _report(
        args,
        summary,
        f"{summary['total']} images in {args.out}, {summary['shards']} shards "
        f"(latents: {latents['encoded']} encoded now, {latents['kept']} kept; captions: "
        f"{text['encoded']} encoded now, {text['kept']} kept)",
    )


def run(args: argparse.Namespace) -> int:
    from voxforge.pipelines.encode import encode_slat_latents, encode_ss_latents
    from voxforge.runs import Run
    from voxforge.train.distributed import resolve_device

    found = _cache_model(args.model)
    if found is not None:
        family, autoencoder = found
        return run_video_cache(args) if family == "video" else run_image_cache(args, autoencoder)
    if args.text_encoder or args.overrides or args.flip or args.resolution:
        raise UserError(
            "--text-encoder, --flip, --resolution and overrides are for an image autoencoder's cache"
        )
    encoders = {"ss_vae": encode_ss_latents, "slat_vae": encode_slat_latents}
    stage = Run.open(args.model).stage
    if stage not in encoders:
        raise UserError(
            f"{args.model}: a '{stage}' run has no encoder; expected one of {', '.join(encoders)}"
        )
    encoder = encoders[stage]
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    options = {"batch_size": args.batch_size} if "batch_size" in inspect.signature(encoder).parameters else {}
    summary = encoder(
        args.model,
        args.data,
        args.out,
        device=resolve_device(args.device),
        ema=not args.raw,
        log=_log,
        **options,
    )
    return _report(
        args,
        summary,
        f"{summary['total']} assets in {args.out} ({summary['encoded']} encoded now, {summary['kept']} kept)",
    )
