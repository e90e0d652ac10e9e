"""The toy_flow stage: data, model, loss, sample hook and metrics, and a short real training run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from PIL import Image

from voxforge.recipe import load_recipe, recipe_from_data
from voxforge.stages import get_stage
from voxforge.stages.toy_flow import GaussianRing, ToyFlowStage, mixture_metrics, ring_centers

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {
    "stage": "toy_flow",
    "model": {"width": 64, "depth": 2, "frequency_dim": 32},
    "data": {"size": 2048, "components": 8, "radius": 2.0, "std": 0.1, "eval_samples": 256},
    "flow": {"timestep_sampling": "logit_normal", "logit_mean": 0.0, "p_uncond": 0.1},
    "sampler": {"method": "heun", "steps": 8, "cfg_scale": 2.0},
    "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 10},
    "train": {
        "max_steps": 200,
        "batch_size": 128,
        "ema_rates": [0.99],
        "sample_every": 100,
        "checkpoint_every": 1000,
        "log_every": 50,
        "progress": False,
        "tensorboard": False,
    },
}


def make_recipe(**sections):
    data = copy.deepcopy(SMALL)
    for section, values in sections.items():
        data[section].update(values)
    return recipe_from_data(data, source="test")


def make_stage(tmp_path, **sections) -> ToyFlowStage:
    return ToyFlowStage(make_recipe(**sections), tmp_path, torch.device("cpu"))


def batch_of(dataset, n=64):
    return torch.utils.data.default_collate([dataset[i] for i in range(n)])


def test_registered_and_builtin_recipe_loads():
    assert get_stage("toy_flow") is ToyFlowStage
    recipe = load_recipe("toy_flow")
    assert recipe.train.sample_every > 0 and recipe.train.ema_rates and recipe.optim.schedule == "cosine"
    assert recipe.optim.warmup_steps > 0 and recipe.sampler.cfg_scale > 1 and recipe.flow.p_uncond > 0


def test_dataset_is_a_function_of_index_and_epoch():
    cfg = make_recipe().data
    a, b = GaussianRing(cfg, seed=3), GaussianRing(cfg, seed=3)
    b.set_epoch(0)
    _ = b[5]  # access order does not matter
    assert torch.equal(a[17]["x"], b[17]["x"]) and int(a[17]["label"]) == 17 % cfg.components
    b.set_epoch(1)
    assert not torch.equal(a[17]["x"], b[17]["x"])
    a.set_epoch(1)
    assert torch.equal(a[17]["x"], b[17]["x"])
    assert not torch.equal(GaussianRing(cfg, seed=4)[17]["x"], GaussianRing(cfg, seed=3)[17]["x"])
    points, labels = a.points(1), a.labels
    offsets = points - ring_centers(cfg.components, cfg.radius)[labels]
    assert abs(offsets.std().item() - cfg.std) < 0.01
    assert torch.equal(torch.bincount(labels), torch.full((cfg.components,), cfg.size // cfg.components))


def test_untrained_model_returns_zero_velocity(tmp_path):
    stage = make_stage(tmp_path)
    model = stage.build_model()
    v = model(torch.randn(5, 2), torch.rand(5), torch.tensor([0, 1, 2, 3, 8]))
    assert v.shape == (5, 2) and torch.equal(v, torch.zeros(5, 2))


def test_loss_is_finite_and_reaches_every_parameter(tmp_path):
    stage = make_stage(tmp_path, flow={"p_uncond": 0.5})
    model = stage.build_model()
    torch.nn.init.normal_(model.output.weight, std=0.1)  # past the zero init, gradients flow everywhere
    torch.manual_seed(0)
    loss, metrics = stage.loss(model, batch_of(stage.build_dataset()))
    assert loss.ndim == 0 and torch.isfinite(loss) and 0 < metrics["mean_t"] < 1
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"no gradient reaches {name}"


class LabelSpy(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x, t, label):
        self.seen.append(label.clone())
        return self.model(x, t, label)


@pytest.mark.parametrize(
    ("sections", "expect"),
    [
        ({"flow": {"p_uncond": 0.0}}, "real"),
        ({"flow": {"p_uncond": 1.0}}, "null"),
        ({"flow": {"p_uncond": 0.0}, "data": {"conditional": False}}, "null"),
        ({"flow": {"p_uncond": 0.5}}, "mixed"),
    ],
)
def test_loss_applies_condition_dropout(tmp_path, sections, expect):
    stage = make_stage(tmp_path, **sections)
    spy = LabelSpy(stage.build_model())
    batch = batch_of(stage.build_dataset(), 256)
    torch.manual_seed(0)
    stage.loss(spy, batch)
    (seen,) = spy.seen
    null = stage.recipe.data.components
    dropped = seen == null
    assert torch.equal(seen[~dropped], batch["label"][~dropped])
    if expect == "real":
        assert not dropped.any()
    elif expect == "null":
        assert dropped.all()
    else:
        assert abs(dropped.float().mean().item() - 0.5) < 0.15


def test_mixture_metrics_separate_data_from_noise():
    k, radius, std, n = 8, 2.0, 0.1, 1000
    centers = ring_centers(k, radius)
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % k

    def data():
        return centers[labels] + std * torch.randn(n, 2, generator=gen)

    good = mixture_metrics(data(), labels, data(), centers, std, radius)
    assert abs(good["mode_dist"] - std * math.sqrt(math.pi / 2)) < 0.01  # mean of a Rayleigh(std)
    assert good["class_acc"] == 1.0 and good["mmd"] < 0.01
    entropy = math.log(2 * math.pi * math.e * std**2) + math.log(k)
    assert abs(good["nll"] - entropy) < 0.1
    noise = mixture_metrics(torch.randn(n, 2, generator=gen), labels, data(), centers, std, radius)
    assert noise["mode_dist"] > 5 * good["mode_dist"] and noise["mmd"] > 10 * good["mmd"]
    assert noise["nll"] > good["nll"] + 10 and noise["class_acc"] < 0.3
    one_mode = mixture_metrics(centers[:1].expand(n, 2), None, data(), centers, std, radius)
    assert one_mode["modes_covered"] == 1 / k
    assert mixture_metrics(data(), None, data(), centers, std, radius)["modes_covered"] == 1.0


def test_on_sample_writes_png_and_returns_metrics(tmp_path):
    stage = make_stage(tmp_path)
    torch.manual_seed(0)
    model = stage.build_model().eval()
    metrics = stage.on_sample(model, 7, tmp_path / "samples")
    with Image.open(tmp_path / "samples" / "samples.png") as image:
        assert image.size == (800, 400) and image.mode == "RGB"
        assert len(set(image.getdata())) > 5  # grey targets, coloured samples, black text
    expected = {"mode_dist", "mmd", "nll", "class_acc", "uncond_mode_dist", "uncond_mmd", "uncond_nll"}
    assert expected <= set(metrics) and all(math.isfinite(v) for v in metrics.values())
    # an untrained model returns its noise: far from the modes
    assert metrics["mode_dist"] > 0.5
    # fixed noise: the hook is deterministic
    assert stage.on_sample(model, 7, tmp_path / "again") == metrics
    uncond = make_stage(tmp_path, data={"conditional": False})
    metrics = uncond.on_sample(uncond.build_model(), 0, tmp_path / "uncond")
    assert "class_acc" not in metrics and "modes_covered" in metrics
    with Image.open(tmp_path / "uncond" / "samples.png") as image:
        assert image.size == (400, 400)


def test_training_moves_samples_to_the_target(tmp_path):
    from voxforge.train.checkpoint import load_model_weights
    from voxforge.train.engine import train

    recipe = make_recipe()
    run_dir = tmp_path / "run"
    stage = ToyFlowStage(recipe, run_dir, torch.device("cpu"))
    torch.manual_seed(recipe.train.seed)
    before = stage.evaluate(stage.build_model()).metrics

    result = train(recipe, run_dir)
    assert result.step == recipe.train.max_steps and result.skipped_steps == 0
    after = result.metrics  # on_train_end: the EMA model
    assert after["mode_dist"] < 0.3 * before["mode_dist"]
    assert after["mmd"] < 0.5 * before["mmd"]
    assert after["class_acc"] > 0.9 > before["class_acc"]
    assert after["uncond_mmd"] < 0.6 * before["uncond_mmd"]
    for step in (100, 200):
        assert (run_dir / "samples" / f"step_{step:08d}" / "samples.png").is_file()

    raw = stage.build_model()
    load_model_weights(raw, run_dir, ema=False)
    raw_metrics = stage.evaluate(raw).metrics
    assert raw_metrics["mode_dist"] < 0.3 * before["mode_dist"]
    ema = stage.build_model()
    load_model_weights(ema, run_dir, ema=True)
    assert stage.evaluate(ema).metrics == pytest.approx({k: after[k] for k in before})


def test_interrupted_run_resumes_bit_exactly(tmp_path):
    """The stage draws only from the engine's RNG and its data from (index, epoch)."""
    from voxforge.train.checkpoint import latest_checkpoint, load_state_dict_file
    from voxforge.train.engine import train

    # 40 steps of 128 cross the epoch boundary of the 2048-sample dataset (16 batches)
    recipe = make_recipe(train={"max_steps": 40, "sample_every": 0})
    train(recipe, tmp_path / "straight")
    first = train(recipe, tmp_path / "resumed", stop_after=15)
    assert first.reason == "stop_after" and first.step == 15
    train(recipe, tmp_path / "resumed")

    def weights(run):
        ckpt = latest_checkpoint(tmp_path / run)
        return {k: load_state_dict_file(ckpt.weights[k]) for k in ckpt.weights}

    straight, resumed = weights("straight"), weights("resumed")
    assert straight.keys() == resumed.keys() and len(straight) == 2  # model + one EMA
    for key in straight:
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}:{name}"
