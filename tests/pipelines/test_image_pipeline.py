"""ImagePipeline against diffusers' SanaPipeline: same weights, noise and steps → the same image.

Tiny random-weight SanaTransformer2DModel + AutoencoderDC (+ a tiny Gemma-2 with a word-level
tokenizer built offline), fp32 on the CPU. SanaPipeline runs with its optional extras off
(resolution binning, caption cleaning, the complex-human-instruction prefix) and on voxforge's
time grid: `sigmas=` for FlowMatchEuler, an installed grid for its DPM-Solver (see
tests/flow/test_dpm.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.pipelines.image_helpers import (
    SHIFT,
    FixedEmbeddings,
    build,
    diffusers,
    random_text,
    sana_dpm,
    save_tiny_sana,
)
from voxforge.errors import UserError
from voxforge.pipelines.image import ImagePipeline

SANA_OFF = dict(use_resolution_binning=False, clean_caption=False, complex_human_instruction=None)


@pytest.mark.parametrize(
    ("sampler", "size", "cfg"),
    [("euler", (32, 32), 4.5), ("euler", (64, 32), 1.0), ("dpm", (32, 32), 4.5), ("dpm", (32, 64), 2.0)],
)
def test_same_image_as_sana_pipeline(sampler, size, cfg):
    steps = 5
    scheduler = (
        diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT) if sampler == "euler" else sana_dpm(SHIFT)
    )
    sana = build(scheduler)
    table = {"p0": random_text(10), "p1": random_text(11, used=6), "": random_text(12, used=1)}
    ours = ImagePipeline(
        sana.transformer,
        sana.vae,
        FixedEmbeddings(table),
        latent_scale=sana.vae.config.scaling_factor,
        flow_shift=SHIFT,
    )
    prompts = ["p0", "p1"]
    noise = ours.make_latent_noise(2, size, seed=7)
    embeds, mask = ours.encode_prompts(prompts)
    neg_embeds, neg_mask = ours.encode_prompts(["", ""])
    extra = {"sigmas": np.linspace(1.0, 0.0, steps + 1)[:-1].tolist()} if sampler == "euler" else {}
    common = dict(
        prompt_embeds=embeds,
        prompt_attention_mask=mask.long(),
        negative_prompt=None,
        negative_prompt_embeds=neg_embeds,
        negative_prompt_attention_mask=neg_mask.long(),
        num_inference_steps=steps,
        guidance_scale=cfg,
        width=size[0],
        height=size[1],
        **SANA_OFF,
        **extra,
    )
    reference_latents = sana(latents=noise.clone(), output_type="latent", **common).images
    reference = sana(latents=noise.clone(), output_type="np", **common).images
    latents = ours.generate(
        prompts, steps=steps, cfg=cfg, seed=7, size=size, sampler=sampler, output="latent"
    )
    image = ours.generate(prompts, steps=steps, cfg=cfg, seed=7, size=size, sampler=sampler, output="float")
    assert image.shape == (2, size[1], size[0], 3)
    torch.testing.assert_close(latents, reference_latents, atol=1e-4, rtol=1e-4)
    assert np.abs(image - reference).max() < 1e-4
    assert 0.01 < image.std()  # a real image, not a saturated one
    assert not np.allclose(image[0], image[1], atol=1e-3)  # the prompt matters


def test_from_diffusers_folder_generates_sana_pipeline_images(tmp_path):
    sana = save_tiny_sana(tmp_path / "sana")
    ours = ImagePipeline.from_diffusers(tmp_path / "sana", max_sequence_length=8)
    assert ours.flow_shift == SHIFT and ours.resolution == (32, 32) and ours.factor == 4
    prompts, negative, steps = ["a Red circle", "  A big BLUE square"], "Green", 4  # cased: Sana lower-cases
    noise = ours.make_latent_noise(2, (32, 32), seed=3)
    reference = sana(
        prompt=prompts,
        negative_prompt=negative,
        latents=noise,
        num_inference_steps=steps,
        guidance_scale=4.5,
        height=32,
        width=32,
        max_sequence_length=8,
        sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1].tolist(),
        output_type="np",
        **SANA_OFF,
    ).images
    image = ours.generate(
        prompts, negative=negative, steps=steps, cfg=4.5, seed=3, sampler="euler", output="float"
    )
    assert np.abs(image - reference).max() < 1e-4
    uint8 = ours.generate(prompts, negative=negative, steps=steps, cfg=4.5, seed=3, sampler="euler")
    assert uint8.dtype == np.uint8 and uint8.shape == (2, 32, 32, 3)
    assert np.array_equal(uint8, (reference * 255).round().astype(np.uint8))
    # from_model recognises the folder
    assert isinstance(ImagePipeline.from_model(tmp_path / "sana"), ImagePipeline)


def test_seed_per_image_and_determinism(tmp_path):
    sana = build(diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    table = {p: random_text(i) for i, p in enumerate(["a", "b", ""])}
    ours = ImagePipeline(
        sana.transformer, sana.vae, FixedEmbeddings(table), latent_scale=0.4, flow_shift=SHIFT
    )
    both = ours.generate(["a", "b"], steps=2, seed=5)
    again = ours.generate(["a", "b"], steps=2, seed=5)
    assert np.array_equal(both, again)
    alone = ours.generate(["b"], steps=2, seed=6)  # image i uses seed + i
    assert np.abs(alone[0].astype(int) - both[1].astype(int)).max() <= 1
    assert not np.array_equal(ours.generate(["a"], steps=2, seed=9)[0], both[0])


def test_bad_inputs_are_user_errors(tmp_path):
    sana = build(diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    ours = ImagePipeline(
        sana.transformer,
        sana.vae,
        FixedEmbeddings({"a": random_text(0), "": random_text(1)}),
        latent_scale=0.4,
        flow_shift=SHIFT,
    )
    with pytest.raises(UserError, match="multiples of 4"):
        ours.generate(["a"], steps=1, size=(30, 32))
    with pytest.raises(UserError, match="sampler"):
        ours.generate(["a"], steps=1, sampler="ddim")
    with pytest.raises(UserError, match="steps"):
        ours.generate(["a"], steps=0)
    with pytest.raises(UserError, match="negative prompts"):
        ours.generate(["a"], negative=["", ""], steps=1)
    with pytest.raises(UserError, match="not found"):
        ImagePipeline.from_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither"):
        ImagePipeline.from_model(tmp_path / "empty")
    (tmp_path / "half" / "transformer").mkdir(parents=True)
    with pytest.raises(UserError, match="missing vae/"):
        ImagePipeline.from_diffusers(tmp_path / "half")


@pytest.mark.parametrize("cfg", [4.5, 1.0])
def test_sana_schedule_matches_sana_pipeline_defaults(cfg):
    """schedule="sana": SanaPipeline with its own DPM scheduler, untouched (grid from
    shift(0.999), integer timesteps), gives the same image."""
    steps = 6
    scheduler = diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=SHIFT,
        solver_order=2,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    sana = build(scheduler)
    table = {"p0": random_text(20), "": random_text(21, used=1)}
    ours = ImagePipeline(
        sana.transformer,
        sana.vae,
        FixedEmbeddings(table),
        latent_scale=sana.vae.config.scaling_factor,
        flow_shift=SHIFT,
    )
    noise = ours.make_latent_noise(1, (32, 32), seed=2)
    embeds, mask = ours.encode_prompts(["p0"])
    neg_embeds, neg_mask = ours.encode_prompts([""])
    reference = sana(
        prompt_embeds=embeds,
        prompt_attention_mask=mask.long(),
        negative_prompt=None,
        negative_prompt_embeds=neg_embeds,
        negative_prompt_attention_mask=neg_mask.long(),
        latents=noise,
        num_inference_steps=steps,
        guidance_scale=cfg,
        height=32,
        width=32,
        output_type="np",
        **SANA_OFF,
    ).images
    image = ours.generate(
        ["p0"], steps=steps, cfg=cfg, seed=2, sampler="dpm", schedule="sana", output="float"
    )
    assert np.abs(image - reference).max() < 1e-4
    flow = ours.generate(["p0"], steps=steps, cfg=cfg, seed=2, sampler="dpm", output="float")
    assert np.abs(flow - reference).max() > 1e-3  # the grids do differ
    with pytest.raises(UserError, match="sampler 'dpm'"):
        ours.generate(["p0"], steps=2, sampler="euler", schedule="sana")
