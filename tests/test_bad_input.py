"""Bad input is refused with a message naming the node, the input and the fix, before torch sees it."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import Graph

from diffusers_stages.engine.errors import StageError


def refused(call, node: str, input_name: str, *words: str) -> StageError:
    with pytest.raises(StageError) as info:
        call()
    error = info.value
    message = str(error)
    assert error.node_name == node and error.input_name == input_name, message
    assert "Fix:" in message and error.fix, message
    for word in words:
        assert word.lower() in message.lower(), message
    return error


def load(nodes, **inputs):
    return lambda: nodes["DS_LoadModel"].execute(**{"repo_id": "", "dtype": "fp32", **inputs})


def test_missing_model(nodes):
    refused(load(nodes, model="diffusers/no-such-model"), "Load Diffusers Model", "model", "not found",
            "models/diffusers")
    message = nodes["DS_LoadModel"].VALIDATE_INPUTS(model="checkpoints/missing.safetensors", repo_id="")
    assert isinstance(message, str) and "not found" in message


def test_unknown_repo_id_offline(nodes):
    refused(load(nodes, model="", repo_id="nobody-here/not-a-model"), "Load Diffusers Model", "repo_id",
            "not in the local Hugging Face cache", "allow_download")
    refused(load(nodes, model="", repo_id="not a repo id"), "Load Diffusers Model", "repo_id", "owner/name")


def test_path_traversal(nodes, models_root):
    for name in ("checkpoints/../../etc/passwd", "diffusers/../checkpoints", "checkpoints//etc/passwd",
                 "checkpoints/..\\..\\secret.safetensors"):
        refused(load(nodes, model=name), "Load Diffusers Model", "model", "outside the model folder")
    assert "outside" in nodes["DS_LoadModel"].VALIDATE_INPUTS(model="checkpoints/../x.safetensors", repo_id="")


def test_pickle_checkpoint_refused(nodes, models_root):
    path = os.path.join(models_root["root"], "checkpoints", "old.ckpt")
    with open(path, "wb") as f:
        f.write(b"\x80\x04not really a pickle")
    refused(load(nodes, model="checkpoints/old.ckpt"), "Load Diffusers Model", "model", "pickle", ".safetensors")


def test_corrupt_safetensors(nodes, models_root):
    path = os.path.join(models_root["root"], "checkpoints", "broken.safetensors")
    with open(models_root["sd1_single"], "rb") as f:
        head = f.read(4096)
    with open(path, "wb") as f:
        f.write(head)  # a download cut short
    refused(load(nodes, model="checkpoints/broken.safetensors"), "Load Diffusers Model", "model",
            "not a readable safetensors", "download it again")


def test_checkpoint_of_no_known_family(nodes, models_root):
    from safetensors.torch import save_file

    path = os.path.join(models_root["root"], "checkpoints", "lora-not-a-model.safetensors")
    save_file({"lora_unet_down.lora_up.weight": torch.zeros(2, 2)}, path)
    refused(load(nodes, model="checkpoints/lora-not-a-model.safetensors"), "Load Diffusers Model", "model",
            "not a checkpoint of a supported model family")


def test_folder_of_unsupported_family(nodes, models_root):
    for name, index, words in (
            ("some-kandinsky", {"_class_name": "KandinskyV22Pipeline"}, ("KandinskyV22Pipeline", "cannot run")),
            ("some-xl-refiner", {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None]},
             ("refiner",))):
        folder = os.path.join(models_root["root"], "diffusers", name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "model_index.json"), "w") as f:
            json.dump(index, f)
        refused(load(nodes, model=f"diffusers/{name}"), "Load Diffusers Model", "model", *words)


def test_pickle_only_diffusers_folder(nodes, models_root):
    import shutil

    folder = os.path.join(models_root["root"], "diffusers", "pickled")
    shutil.copytree(models_root["sd1_folder"], folder)
    unet_dir = os.path.join(folder, "unet")
    os.remove(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    open(os.path.join(unet_dir, "diffusion_pytorch_model.bin"), "wb").close()
    refused(load(nodes, model="diffusers/pickled"), "Load Diffusers Model", "model", "pickle")


def test_width_not_multiple_of_8(nodes, sd1_graph):
    empty = nodes["DS_EmptyLatent"]
    refused(lambda: empty.execute(denoiser=sd1_graph.denoiser, width=65, height=64, batch_size=1),
            "Empty Latent (Diffusers)", "width", "not a multiple of 8", "64 or 72")
    refused(lambda: empty.execute(denoiser=sd1_graph.denoiser, width=64, height=100, batch_size=1),
            "Empty Latent (Diffusers)", "height", "96 or 104")


def test_text_encoder_of_another_model(nodes, sd1_graph):
    """An SD2 text encoder's prompt wired into an SD1 UNet: refused before the UNet runs."""
    from conftest import Graph

    sd2 = Graph(nodes, "diffusers/tiny-sd2-v")
    guider = sd2.guider("a cat", "")
    refused(lambda: sd1_graph.denoise(guider, sd1_graph.default_scheduler, sd1_graph.empty()),
            "Denoise (Diffusers)", "guider", "48 wide", "expects 32", "text encoder")


def test_latent_of_another_family(nodes, sd1_graph):
    latent = {"samples": torch.zeros(1, 16, 8, 8)}  # an SD3/Flux-shaped latent
    refused(lambda: sd1_graph.denoise(sd1_graph.guider("a", ""), sd1_graph.default_scheduler, latent),
            "Denoise (Diffusers)", "latent", "16", "4-channel")
    refused(lambda: nodes["DS_VAEDecode"].execute(vae=sd1_graph.vae, samples=latent), "VAE Decode (Diffusers)",
            "samples", "4-channel")


def test_invalid_sampler_schedule_combination(nodes, sd1_graph):
    message = nodes["DS_Scheduler"].VALIDATE_INPUTS(sampler_name="ddim", schedule="karras")
    assert isinstance(message, str) and "Scheduler (Diffusers)" in message and "karras" in message
    refused(lambda: nodes["DS_Scheduler"].execute(scheduler=sd1_graph.default_scheduler,
                                                  sampler_name="ddim", schedule="karras"),
            "Scheduler (Diffusers)", "schedule", "'karras' schedule cannot be used with the DDIMScheduler")
    assert nodes["DS_Scheduler"].VALIDATE_INPUTS(sampler_name="dpmpp_2m", schedule="karras") is True


def test_clip_skip_out_of_range(nodes, sd1_graph):
    refused(lambda: sd1_graph.encode("a cat", clip_skip=4), "Text Encode (Diffusers)", "clip_skip", "0 (no skip) to 3")


def test_guider_interval_backwards(nodes, sd1_graph):
    assert isinstance(nodes["DS_CFGGuider"].VALIDATE_INPUTS(start_percent=0.8, end_percent=0.2), str)


def test_inpainting_mask_not_silently_ignored(nodes, sd1_graph):
    """A mask that repaints nothing keeps the image (up to raw <-> model-space rounding); one that repaints all of
    it changes it."""
    torch.manual_seed(0)
    raw = sd1_graph.encode_image(torch.rand(1, 64, 64, 3))
    guider, scheduler = sd1_graph.guider("a", ""), sd1_graph.default_scheduler
    kept = sd1_graph.denoise(guider, scheduler, dict(raw, noise_mask=torch.zeros(1, 64, 64)), steps=2)
    assert (kept["samples"] - raw["samples"]).abs().max() < 1e-5
    repainted = sd1_graph.denoise(guider, scheduler, dict(raw, noise_mask=torch.ones(1, 64, 64)), steps=2)
    assert (repainted["samples"] - raw["samples"]).abs().mean() > 0.05


def test_guider_without_negative(nodes, sd1_graph):
    guider_node = nodes["DS_CFGGuider"]
    unguided = guider_node.execute(positive=sd1_graph.encode("a cat"), cfg=1.0)[0]
    with_negative = guider_node.execute(positive=sd1_graph.encode("a cat"), negative=sd1_graph.encode("x"), cfg=1.0)[0]
    a = sd1_graph.denoise(unguided, sd1_graph.default_scheduler, sd1_graph.empty(), steps=2)
    b = sd1_graph.denoise(with_negative, sd1_graph.default_scheduler, sd1_graph.empty(), steps=2)
    assert torch.equal(a["samples"], b["samples"])  # cfg 1: the negative is never used


def test_specialised_model_refused_at_load(nodes, models_root):
    """An 8-channel U-Net (InstructPix2Pix's layout) is refused when loaded; inpainting U-Nets (9) load."""
    import shutil

    folder = os.path.join(models_root["root"], "diffusers", "tiny-sd15-pix2pix")
    if not os.path.isdir(folder):
        shutil.copytree(models_root["sd1_folder"], folder)
        config_path = os.path.join(folder, "unet", "config.json")
        with open(config_path) as f:
            config = json.load(f)
        from diffusers import UNet2DConditionModel

        UNet2DConditionModel(**{**{k: v for k, v in config.items() if not k.startswith("_")},
                                "in_channels": 8}).save_pretrained(os.path.join(folder, "unet"))
    refused(load(nodes, model="diffusers/tiny-sd15-pix2pix"), "Load Diffusers Model", "model", "8 input channels",
            "specialised model")


def test_size_conditioning_refuses_families_without_it(nodes):
    """SD3 and Flux prompts carry pooled embeddings too; the size used to be accepted and silently ignored."""
    for folder, name in (("diffusers/tiny-sd3", "Stable Diffusion 3"), ("diffusers/tiny-flux", "Flux.1")):
        graph = Graph(nodes, folder)
        refused(lambda graph=graph: nodes["DS_SizeConditioning"].execute(
            conditioning=graph.encode("a cat"), original_width=1024, original_height=1024),
            "Size Conditioning (Diffusers SDXL)", "conditioning", f"{name} takes no size conditioning")
