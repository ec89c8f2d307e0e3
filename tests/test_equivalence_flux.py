"""Flux: our node graph against FluxPipeline / FluxImg2ImgPipeline (torch.equal)."""

from __future__ import annotations

import pytest
import torch
from conftest import Graph, bchw, load_pipeline

from diffusers_stages.engine.errors import StageError

SEED = 21
PROMPT = "a watercolor painting of a red fox"


@pytest.fixture(scope="module")
def flux_graph(nodes):
    return Graph(nodes, "diffusers/tiny-flux")


@pytest.fixture(scope="module")
def flux_pipe(models_root):
    return load_pipeline("FluxPipeline", models_root["flux_folder"])


def flux_guider(graph, guidance=3.5, negative="", cfg=1.0):
    positive = graph.nodes["DS_FluxGuidance"].execute(conditioning=graph.encode(PROMPT), guidance=guidance)[0]
    return graph.nodes["DS_CFGGuider"].execute(positive=positive, negative=graph.encode(negative), cfg=cfg)[0]


def run_pipe(pipe, output_type, width=64, height=64, batch=1, guidance=3.5, **kwargs):
    return pipe(PROMPT, num_inference_steps=4, width=width, height=height, num_images_per_prompt=batch,
                guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(SEED),
                output_type=output_type, **kwargs).images


def test_flux_encode_matches_pipeline(flux_graph, flux_pipe):
    cond = flux_graph.encode(PROMPT)
    with torch.no_grad():  # as inside the pipeline call (autograd changes CPU kernels slightly)
        embeds, pooled, _ = flux_pipe.encode_prompt(PROMPT, PROMPT, device="cpu")
    assert torch.equal(cond.embeds, embeds) and torch.equal(cond.pooled, pooled)


@pytest.mark.parametrize("width, height, batch, guidance", [(64, 64, 1, 3.5), (96, 64, 2, 5.0)])
def test_flux_txt2img_matches_pipeline(flux_graph, flux_pipe, width, height, batch, guidance):
    latent = flux_graph.denoise(flux_guider(flux_graph, guidance), flux_graph.default_scheduler,
                                flux_graph.empty(width, height, batch), seed=SEED)
    image = flux_graph.decode(latent)
    assert latent["samples"].shape == (batch, 16, height // 8, width // 8)  # core LATENT layout, unpacked
    ref = run_pipe(flux_pipe, "pt", width, height, batch, guidance)
    assert torch.equal(bchw(image), ref)


def test_flux_true_cfg_matches_pipeline(flux_graph, flux_pipe):
    latent = flux_graph.denoise(flux_guider(flux_graph, negative="blurry", cfg=4.0), flux_graph.default_scheduler,
                                flux_graph.empty(), seed=SEED)
    ref = run_pipe(flux_pipe, "pt", negative_prompt="blurry", true_cfg_scale=4.0)
    assert torch.equal(bchw(flux_graph.decode(latent)), ref)


def test_flux_other_flow_samplers_run(flux_graph):
    """FluxPipeline cannot take these (it passes custom sigmas), so there is no reference: they must run and differ."""
    for sampler in ("euler_ancestral", "heun", "dpmpp_2m", "uni_pc_bh2"):
        latent = flux_graph.denoise(flux_guider(flux_graph), flux_graph.scheduler(sampler, "normal"),
                                    flux_graph.empty(), seed=SEED, steps=3)
        assert torch.isfinite(latent["samples"]).all()


def test_flux_img2img_matches_pipeline(flux_graph, flux_pipe):
    from diffusers import FluxImg2ImgPipeline

    torch.manual_seed(4)
    image = torch.rand(1, 64, 64, 3)
    raw = flux_graph.encode_image(image)
    latent = flux_graph.denoise(flux_guider(flux_graph), flux_graph.default_scheduler, raw, seed=SEED, steps=5,
                                denoise=0.6)
    pipe = FluxImg2ImgPipeline(**flux_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    # Our VAE Encode gives the posterior's mode (as core ComfyUI); the pipeline would sample it with the seed,
    # so it is given our encoded latents, scaled and shifted as it does itself.
    denoiser = flux_graph.denoiser
    scaled = (raw["samples"] - denoiser.latent_shift) * denoiser.latent_scale
    ref = pipe(PROMPT, image=scaled, strength=0.6, num_inference_steps=5, guidance_scale=3.5, height=64, width=64,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(flux_graph.decode(latent)), ref)


def test_flux_sizes_and_wiring_refused(flux_graph, sd1_graph, nodes):
    with pytest.raises(StageError, match="not a multiple of 16"):
        nodes["DS_EmptyLatent"].execute(denoiser=flux_graph.denoiser, width=72, height=64, batch_size=1)
    with pytest.raises(StageError, match="encoded by a Flux.1 text encoder, "
                                           "but the denoiser is Stable Diffusion 1.x/2.x"):
        sd1_graph.denoise(flux_guider(flux_graph), sd1_graph.default_scheduler, sd1_graph.empty())
    with pytest.raises(StageError, match="16-channel latents"):
        flux_graph.denoise(flux_guider(flux_graph), flux_graph.default_scheduler, sd1_graph.empty())
    with pytest.raises(StageError, match="not available for flow-matching"):
        nodes["DS_Scheduler"].execute(scheduler=flux_graph.default_scheduler, sampler_name="dpmpp_2m",
                                      schedule="karras")


def test_flux_without_t5_is_refused(nodes, models_root):
    import os
    import shutil

    folder = os.path.join(models_root["root"], "diffusers", "tiny-flux-no-t5")
    if not os.path.isdir(folder):
        shutil.copytree(models_root["flux_folder"], folder,
                        ignore=shutil.ignore_patterns("text_encoder_2", "tokenizer_2"))
    with pytest.raises(StageError, match="no T5 text encoder"):
        nodes["DS_LoadModel"].execute(model="diffusers/tiny-flux-no-t5", repo_id="", dtype="fp32")


def test_vae_files_swap_in_exactly(nodes, flux_graph, sd1_graph, models_root):
    """Load VAE: an LDM-layout SD1.5 VAE and a diffusers-layout Flux VAE decode exactly as the models' own."""
    load = nodes["DS_LoadVAE"]
    sd1_vae = load.execute(vae_name="tiny-sd15-vae.safetensors", dtype="fp32")[0]
    flux_vae = load.execute(vae_name="tiny-flux-vae-diffusers.safetensors", dtype="fp32")[0]
    decode = nodes["DS_VAEDecode"]
    torch.manual_seed(2)
    sd1_latent, flux_latent = {"samples": torch.randn(1, 4, 8, 8)}, {"samples": torch.randn(1, 16, 8, 8)}
    assert torch.equal(decode.execute(vae=sd1_vae, samples=sd1_latent)[0], sd1_graph.decode(sd1_latent))
    assert torch.equal(decode.execute(vae=flux_vae, samples=flux_latent)[0], flux_graph.decode(flux_latent))
    with pytest.raises(StageError, match="4-channel"):
        decode.execute(vae=sd1_vae, samples=flux_latent)
    with pytest.raises(StageError, match="outside the model folder"):
        load.execute(vae_name="../checkpoints/tiny-sd15.safetensors", dtype="fp32")
    import os

    from safetensors.torch import save_file

    not_a_vae = os.path.join(models_root["root"], "vae", "x.safetensors")
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, not_a_vae)
    with pytest.raises(StageError, match="not a VAE"):
        load.execute(vae_name="x.safetensors", dtype="fp32")


def test_flow_preview_estimates_the_clean_latent(flux_graph):
    """Flow schedulers return no x0; previews get x0 = x_t - sigma_t * v, which at the last step is the result."""
    from diffusers_stages.engine import denoise as engine

    seen = []
    guider = flux_guider(flux_graph)
    with torch.inference_mode():  # as the Denoise node runs it
        raw = engine.denoise(flux_graph.denoiser, guider, flux_graph.default_scheduler,
                             flux_graph.empty()["samples"], SEED, 4, on_step=lambda i, n, x0: seen.append(x0))
    assert len(seen) == 4 and all(x.shape == (1, 16, 8, 8) for x in seen)
    denoiser = flux_graph.denoiser
    final = (raw - denoiser.latent_shift) * denoiser.latent_scale
    assert torch.allclose(seen[-1], final, atol=1e-5)  # the last sigma steps to 0: x0 is the output
