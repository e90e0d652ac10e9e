"""Standard FID (Inception-v3 in pytorch-fid's layout) and CLIP score from local weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from voxforge.errors import UserError
from voxforge.eval.inception import FIDInception, load_fid_inception
from voxforge.eval.standard_image import clip_score, inception_features, load_clip, standard_fid


def test_inception_has_the_fid_networks_parameters_and_key_names():
    with torch.device("meta"):
        model = FIDInception()
    # torchvision's Inception3 (27 161 264 with the aux head and 1000 classes) minus its aux head
    # (3 326 696), with the TF graph's 1008 logits: the count pytorch-fid's file holds
    assert sum(p.numel() for p in model.parameters()) == 23_850_960
    keys = model.state_dict()
    for key, shape in {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6b.branch7x7dbl_5.conv.weight": (192, 128, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_3b.bn.running_var": (384,),
        "fc.weight": (1008, 2048),
    }.items():
        assert tuple(keys[key].shape) == shape, key


def test_loader_is_strict_and_names_the_file(tmp_path):
    state = {k: v for k, v in FIDInception().state_dict().items() if not k.endswith("num_batches_tracked")}
    good = tmp_path / "pt_inception.pth"
    torch.save(state, good)
    model = load_fid_inception(good)
    assert torch.equal(model.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])
    assert not model.training
    bad = tmp_path / "bad.pth"
    broken = dict(state)
    broken.pop("Mixed_6e.branch1x1.conv.weight")
    broken["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(broken, bad)
    with pytest.raises(UserError) as err:
        load_fid_inception(bad)
    text = str(err.value)
    assert "bad.pth" in text and "Mixed_6e.branch1x1.conv.weight" in text and "fc.weight" in text
    with pytest.raises(UserError, match="no such file"):
        load_fid_inception(tmp_path / "missing.pth")


@pytest.mark.slow
def test_standard_fid_is_zero_on_equal_sets_and_grows_with_a_shift():
    torch.manual_seed(0)
    model = FIDInception().eval()
    real = torch.rand(6, 3, 48, 48)
    features = inception_features(real, model, batch_size=4)
    assert features.shape == (6, 2048) and features.dtype == torch.float64
    assert standard_fid(real, real, model) == pytest.approx(0.0, abs=1e-6)
    darker = standard_fid(real, real * 0.5, model)
    darkest = standard_fid(real, real * 0.1, model)
    assert 0 < darker < darkest


def _tiny_clip(folder):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    return folder


def test_clip_score_is_the_definition_through_clips_own_forward(tmp_path):
    from PIL import Image
    from transformers import CLIPModel

    folder = _tiny_clip(tmp_path / "clip")
    torch.manual_seed(1)
    images = (torch.rand(4, 3, 40, 36) * 255).round() / 255
    prompts = ["a red circle", "two blue squares", "a green star", "purple"]
    ours = clip_score(images, prompts, folder, batch_size=3)

    # reference: CLIP's preprocessing by hand (shortest edge 32, bicubic, centre crop, CLIP's mean
    # and std) and the cosine from the model's own forward (logits = exp(logit_scale) * cos)
    model = CLIPModel.from_pretrained(folder).eval()
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    pixels = []
    for image in images:
        pil = Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())
        w, h = pil.size
        pil = pil.resize((32, int(32 * h / w)), Image.BICUBIC)
        top = (pil.size[1] - 32) // 2
        crop = torch.from_numpy(np.array(pil.crop((0, top, 32, top + 32)))).float() / 255
        pixels.append((crop.permute(2, 0, 1) - mean) / std)
    tokens = load_clip(folder)[1](prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(pixel_values=torch.stack(pixels), **tokens).logits_per_image
    cos = logits.diagonal() / model.logit_scale.exp().detach()
    reference = float((100 * cos).clamp_min(0).mean())
    assert reference > 0
    assert ours == pytest.approx(reference, rel=1e-3, abs=1e-3)
    # the tuple form reuses a loaded model and gives the same number
    assert clip_score(images, prompts, load_clip(folder)) == pytest.approx(ours, abs=1e-6)
    with pytest.raises(ValueError, match="4 images but 3 prompts"):
        clip_score(images, prompts[:3], folder)
    with pytest.raises(UserError, match="no config.json"):
        load_clip(tmp_path)
