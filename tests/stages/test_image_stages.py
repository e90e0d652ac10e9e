import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.stages.image_helpers import flow_overrides, image_artefacts, tiny_pretrained_text_encoder
from voxforge.errors import UserError
from voxforge.recipe import load_recipe
from voxforge.runs import IMAGE_INFO, load_image_models, load_image_transformer
from voxforge.stages.image_ae import AE_INFO, ImageAEStage
from voxforge.stages.image_flow import TIMESTEP_SCALE, ImageFlowStage
from voxforge.train.checkpoint import latest_checkpoint
from voxforge.train.engine import train

pytest.importorskip("diffusers")
pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    return image_artefacts(tmp_path_factory.getbasetemp() / "image_family")


@pytest.fixture(scope="session")
def flow_run(artefacts, tmp_path_factory):
    run = tmp_path_factory.getbasetemp() / "image_family" / "flow"
    train(load_recipe("image_flow_tiny", flow_overrides(artefacts)), run)
    return run


@pytest.fixture(scope="session")
def lora_run(artefacts, flow_run):
    run = flow_run.parent / "lora"
    overrides = flow_overrides(artefacts, f"model.init_from={flow_run}", "data.autoencoder=", "lora.rank=2")
    train(load_recipe("image_lora_tiny", overrides + ["lora.alpha=4", "optim.lr=0.05"]), run)
    return run


def test_recipes_load_at_their_documented_scales():
    ae = load_recipe("image_ae_tiny")
    assert ae.stage == "image_ae" and len(ae.model.block_out_channels) == 3
    flow = load_recipe("image_flow_tiny")
    assert (flow.model.finetune, flow.flow.sigma_min, flow.flow.timestep_sampling) == (
        "full",
        0.0,
        "logit_normal",
    )
    lora = load_recipe("image_lora_tiny")
    assert lora.model.finetune == "lora" and lora.lora.targets == ["to_q", "to_k", "to_v", "to_out.0"]
    sana = load_recipe("image_flow_sana_1024")
    assert (sana.model.num_layers, sana.model.heads * sana.model.head_dim) == (28, 1152)
    assert sana.flow.time_shift == 3.0 and sana.text_encoder.max_length == 300
    assert (
        load_recipe("image_flow_sana_512").flow.time_shift
        < load_recipe("image_flow_sana_2048").flow.time_shift
    )


def test_autoencoder_run_reports_psnr_and_exports_a_diffusers_folder(artefacts):
    from diffusers import AutoencoderDC

    run = artefacts["ae_run"]
    metrics = json.loads((run / "final_metrics.json").read_text())
    assert metrics["step"] == 2 and 0 < metrics["eval_psnr"] < 100 and metrics["latent_scale"] > 0
    info = json.loads((run / AE_INFO).read_text())
    ae = AutoencoderDC.from_pretrained(info["autoencoder"], local_files_only=True)
    assert ae.config.scaling_factor == pytest.approx(metrics["latent_scale"])
    assert info["compression"] == 2 and info["latent_channels"] == 4
    assert list(run.glob("samples/*/reconstructions.png"))


def test_held_out_images_never_train(artefacts):
    recipe = load_recipe(
        "image_ae_tiny", flow_overrides(artefacts)[:5] + [f"data.path={artefacts['images']}"]
    )
    recipe.data.eval_images = 3
    stage = ImageAEStage(recipe, artefacts["ae_run"], torch.device("cpu"))
    trained = {r["id"] for r in stage.build_dataset().records}
    held = set(stage.data().eval_ids)
    assert len(held) == 3 and not held & trained and len(trained) == 9
    assert sorted(stage.data().ids)[:3] == sorted(held)


def test_flow_run_records_what_sampling_needs_and_exports_the_transformer(flow_run, artefacts):
    from diffusers import SanaTransformer2DModel

    info = json.loads((flow_run / IMAGE_INFO).read_text())
    assert info["sample_size"] == 16 and info["resolution"] == 32 and info["flow_shift"] == 1.0
    assert info["finetune"] == "full" and info["timestep_scale"] == TIMESTEP_SCALE
    assert (flow_run / "text_encoder" / "vocabulary.json").is_file()
    exported = SanaTransformer2DModel.from_pretrained(
        str(flow_run / "export" / "transformer"), local_files_only=True
    )
    transformer, ae, text, loaded_info = load_image_models(flow_run)
    assert loaded_info == info
    assert ae.config.scaling_factor == pytest.approx(info["latent_scale"])
    embeds, mask = text.encode(["one small red circle on the left", ""])
    x = torch.randn(2, 4, 16, 16)
    args = {"encoder_hidden_states": embeds, "timestep": torch.tensor([300.0, 700.0])}
    with torch.no_grad():
        ours = transformer(x, encoder_attention_mask=mask, return_dict=False, **args)[0]
        theirs = exported.eval()(x, encoder_attention_mask=mask, return_dict=False, **args)[0]
    # the export is the EMA weights the loader reads (diffusers' own attention processor there:
    # equal up to float rounding to voxforge's fp32-fenced one)
    assert torch.allclose(ours, theirs, atol=1e-5)
    heldout = json.loads((flow_run / "eval_heldout.json").read_text())
    assert set(heldout) == {"heldout_loss", "heldout_loss_uncond"}
    from PIL import Image

    (grid,) = flow_run.glob("samples/*/samples.png")  # through the sampling pipeline
    with Image.open(grid) as image:
        assert image.size == (3 * 32, 2 * 32)  # 3 held-out captions; with and without guidance


def test_caption_dropout_replaces_captions_by_the_empty_caption(artefacts, flow_run):
    recipe = load_recipe("image_flow_tiny", flow_overrides(artefacts, "flow.p_uncond=1.0"))
    stage = ImageFlowStage(recipe, flow_run, torch.device("cpu"))
    model = stage.build_model()
    seen = []

    def spy(x, **kwargs):
        seen.append(kwargs)
        return model(x, **kwargs)

    data = stage.build_dataset()
    batch = stage.collate([data[i] for i in range(4)])
    loss, metrics = stage.loss(spy, batch)
    assert torch.isfinite(loss) and metrics["dropped"] == 1.0
    null_embeds, null_mask = stage.null_condition()
    assert torch.equal(seen[0]["encoder_hidden_states"], null_embeds.expand(4, -1, -1))
    assert torch.equal(seen[0]["encoder_attention_mask"], null_mask.expand(4, -1))
    assert (seen[0]["timestep"] / TIMESTEP_SCALE).max() <= 1.0


def test_lora_run_trains_only_adapters_in_small_checkpoints(lora_run, flow_run):
    base = load_image_transformer(flow_run)
    model = load_image_transformer(lora_run)
    base_state = base.state_dict()
    for name, value in model.base.state_dict().items():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(value, base_state[key]), name  # the base stayed frozen
    assert any(p.abs().max() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # adapters moved
    ckpt = latest_checkpoint(lora_run)
    weights = load_file(str(ckpt.weights["model"]))
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    base_size = latest_checkpoint(flow_run).weights["model"].stat().st_size
    assert ckpt.weights["model"].stat().st_size < base_size / 5
    state = torch.load(ckpt.path / "trainer_state.pt", weights_only=True)
    moments = [v for s in state["optimizer"]["state"].values() for v in s.values() if torch.is_tensor(v)]
    assert sum(m.numel() for m in moments) <= 2 * sum(w.numel() for w in weights.values()) + len(moments)
    info = json.loads((lora_run / IMAGE_INFO).read_text())
    assert info["finetune"] == "lora" and info["base"] == str(flow_run.resolve())
    assert info["text_encoder_folder"] == str((flow_run / "text_encoder").resolve())  # the base's vocabulary


def test_saved_lora_loads_in_diffusers_and_matches_voxforge(lora_run, flow_run, artefacts):
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    base = SanaTransformer2DModel.from_pretrained(
        str(flow_run / "export" / "transformer"), local_files_only=True
    )
    ae = AutoencoderDC.from_pretrained(json.loads((artefacts["ae_run"] / AE_INFO).read_text())["autoencoder"])
    pipe = SanaPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=ae,
        transformer=base,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.load_lora_weights(str(lora_run / "export"))  # diffusers' own loader, from the folder we wrote
    plain = pipe.transformer
    transformer, _, text, _ = load_image_models(lora_run)
    embeds, mask = text.encode(["two large blue squares at the top", "one star"])
    x = torch.randn(2, 4, 16, 16)
    args = {"encoder_hidden_states": embeds, "timestep": torch.tensor([100.0, 900.0]), "return_dict": False}
    with torch.no_grad():
        ours = transformer(x, encoder_attention_mask=mask, **args)[0]
        theirs = plain.eval()(x, encoder_attention_mask=mask, **args)[0]
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_progressive_resolution_starts_from_the_previous_stage(artefacts, flow_run, tmp_path):
    overrides = flow_overrides(
        artefacts, f"model.init_from={flow_run}", f"data.path={artefacts['images64']}", "data.resolution=64"
    )
    recipe = load_recipe("image_flow_tiny", overrides + ["data.autoencoder=", "flow.time_shift=2.0"])
    stage = ImageFlowStage(recipe, tmp_path / "flow64", torch.device("cpu"))
    model = stage.build_model()
    previous = load_image_transformer(flow_run).state_dict()
    assert all(torch.equal(v, previous[k]) for k, v in model.state_dict().items())
    assert model.config.sample_size == 32
    info = json.loads((tmp_path / "flow64" / IMAGE_INFO).read_text())
    assert (info["resolution"], info["sample_size"], info["flow_shift"]) == (64, 32, 2.0)
    result = train(recipe, tmp_path / "flow64")
    assert result.reason == "max_steps" and (tmp_path / "flow64" / "export" / "transformer").is_dir()


def test_a_checkpoint_that_does_not_fit_is_refused_naming_its_keys(artefacts, flow_run, tmp_path):
    overrides = flow_overrides(artefacts, f"model.init_from={flow_run}", "model.heads=4")
    with pytest.raises(UserError) as err:
        train(load_recipe("image_flow_tiny", overrides), tmp_path / "wide")
    message = str(err.value)
    assert (
        "model.init_from" in message and "patch_embed.proj.weight (16, 4, 1, 1) vs (32, 4, 1, 1)" in message
    )


def test_pretrained_parts_from_local_folders_train_and_reload(artefacts, tmp_path):
    """A transformers text encoder and a diffusers transformer folder (as a released Sana's),
    LoRA on top: two steps, then the run reloads with the same parts."""
    from diffusers import SanaTransformer2DModel

    encoder = tiny_pretrained_text_encoder(tmp_path / "sana")
    torch.manual_seed(0)
    SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
    ).save_pretrained(tmp_path / "sana" / "transformer")  # fmt: skip
    overrides = flow_overrides(
        artefacts,
        "text_encoder.kind=pretrained",
        f"text_encoder.path={encoder}",
        f"model.pretrained={tmp_path / 'sana' / 'transformer'}",
        "model.finetune=lora",
        "lora.rank=2",
    )
    result = train(load_recipe("image_flow_tiny", overrides), tmp_path / "run")
    assert result.reason == "max_steps"
    weights = load_file(str(latest_checkpoint(tmp_path / "run").weights["model"]))
    assert all("lora_" in k for k in weights)
    info = json.loads((tmp_path / "run" / IMAGE_INFO).read_text())
    assert info["text_encoder"]["kind"] == "pretrained" and info["text_encoder_folder"] == ""
    transformer, _, text, _ = load_image_models(tmp_path / "run")
    assert isinstance(transformer, SanaTransformer2DModel) and transformer.peft_config
    embeds, mask = text.encode(["Two red circles on the left"])
    assert embeds.shape == (1, 16, 16) and mask.sum() == 6
    assert (tmp_path / "run" / "export" / "pytorch_lora_weights.safetensors").is_file()


def test_aspect_buckets_batch_one_size_at_a_time(artefacts, tmp_path):
    from PIL import Image

    from voxforge.data.images import ImagePrepareConfig, prepare_images

    source = tmp_path / "src"
    source.mkdir()
    for i in range(16):
        size = (32, 32) if i % 2 else (48, 24)
        colour = ("red", "blue")[i % 2]
        image = Image.new("RGB", size, {"red": (220, 40, 40), "blue": (40, 80, 220)}[colour])
        image.putpixel((i, 0), (i, i, i))  # distinct bytes: identical files are refused as duplicates
        image.save(source / f"{i:02d}.png")
        (source / f"{i:02d}.txt").write_text(f"a {colour} picture")
    config = ImagePrepareConfig(resolution=32, multiple=8, buckets="aspect", workers=0, progress=False)
    prepare_images([source], tmp_path / "images", config)
    overrides = flow_overrides(
        artefacts, f"data.path={tmp_path / 'images'}", "data.eval_images=4", "train.max_steps=3"
    )
    recipe = load_recipe("image_flow_tiny", overrides)
    stage = ImageFlowStage(recipe, tmp_path / "run", torch.device("cpu"))
    dataset = stage.build_dataset()
    sampler = stage.batch_sampler(dataset, 2, rank=0, world_size=1, seed=0, epoch=0, start_batch=0)
    shapes = [{tuple(dataset[i]["image"].shape) for i in batch} for batch in sampler]
    assert (
        all(len(s) == 1 for s in shapes) and len(set().union(*shapes)) == 2
    )  # one bucket per batch, both used
    result = train(recipe, tmp_path / "run")
    assert result.reason == "max_steps" and "eval_heldout_loss" in result.metrics


def test_fp16_trains_without_nans(artefacts, tmp_path):
    overrides = [o for o in flow_overrides(artefacts) if not o.startswith("train.precision")]
    result = train(
        load_recipe("image_flow_tiny", overrides + ["train.precision=fp16", "train.max_steps=3"]), tmp_path
    )
    # the loss scaler may back off from its first scale once or twice; no step is NaN otherwise
    assert result.reason == "max_steps" and result.skipped_steps <= 3
    assert all(v == v for v in result.metrics.values())


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_resume_is_exact(artefacts, flow_run, tmp_path, finetune):
    extra = ["train.max_steps=4", "train.checkpoint_every=2", "flow.p_uncond=0.5"]
    if finetune == "lora":
        extra += [f"model.init_from={flow_run}", "data.autoencoder=", "lora.rank=2", "train.ema_rates=[0.9]"]
    recipe_name = "image_lora_tiny" if finetune == "lora" else "image_flow_tiny"

    def recipe():
        return load_recipe(recipe_name, flow_overrides(artefacts, *extra))

    train(recipe(), tmp_path / "straight")
    first = train(recipe(), tmp_path / "split", stop_after=2)
    assert first.reason == "stop_after" and first.step == 2
    assert train(recipe(), tmp_path / "split").step == 4
    for key in ("model", "ema_0.9"):
        a = load_file(str(latest_checkpoint(tmp_path / "straight").weights[key]))
        b = load_file(str(latest_checkpoint(tmp_path / "split").weights[key]))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key


@pytest.mark.slow
def test_tiny_recipes_learn(tmp_path):
    """The tiny recipes, shortened: the autoencoder reconstructs held-out images well and the
    flow's held-out loss with captions is clearly below the loss with the empty caption."""
    from tests.stages.image_helpers import COMMON, prepared_images

    images = prepared_images(tmp_path, 32, num=256)
    quiet = [c for c in COMMON if not c.startswith("train.precision")] + ["train.checkpoint_every=1000"]
    ae = train(
        load_recipe(
            "image_ae_tiny", quiet + [f"data.path={images}", "train.max_steps=200", "train.batch_size=8"]
        ),
        tmp_path / "ae",
    )
    assert ae.metrics["eval_psnr"] > 20.0  # 22.9 dB measured (seed 0); untrained: about 10
    flow = train(
        load_recipe(
            "image_flow_tiny",
            quiet + [f"data.path={images}", f"data.autoencoder={tmp_path / 'ae'}", "train.max_steps=300"],
        ),
        tmp_path / "flow",
    )
    # measured 0.26 vs 0.34 (seed 0): the captions are used
    assert flow.metrics["eval_heldout_loss"] < 0.9 * flow.metrics["eval_heldout_loss_uncond"]


# Runs `voxforge train`, SIGKILLing itself right after trainer_state.pt of step 4 is written:
# the adapters of step 4 are on disk, its COMMITTED marker is not.
KILLER = """
import os, signal, sys
from voxforge.train import checkpoint
original = checkpoint._write_durable
def write_then_die(path, write):
    original(path, write)
    if path.name == "trainer_state.pt" and path.parent.name == ".tmp-step_00000004":
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint._write_durable = write_then_die
from voxforge.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_9_during_a_lora_run_resumes_to_the_uninterrupted_weights(artefacts, flow_run, tmp_path):
    overrides = flow_overrides(
        artefacts,
        f"model.init_from={flow_run}",
        "data.autoencoder=",
        "lora.rank=2",
        "train.max_steps=6",
        "train.checkpoint_every=2",
        "train.ema_rates=[0.9]",
    )
    train(load_recipe("image_lora_tiny", overrides), tmp_path / "straight")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    command = ["train", "image_lora_tiny", "--out", str(tmp_path / "killed"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    crashed = subprocess.run([sys.executable, str(script), *command], capture_output=True, text=True, env=env)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    resumed = subprocess.run(
        [sys.executable, "-m", "voxforge", *command], capture_output=True, text=True, env=env, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for key in ("model", "ema_0.9"):
        a = load_file(str(latest_checkpoint(tmp_path / "straight").weights[key]))
        b = load_file(str(latest_checkpoint(tmp_path / "killed").weights[key]))
        assert latest_checkpoint(tmp_path / "killed").step == 6
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key
