"""Inpainting with a noise mask (core's Set Latent Noise Mask on a VAE-encoded image) on a model without mask
inputs: Denoise equals the diffusers inpaint pipeline, which keeps the area outside the (binarised) mask on the
image re-noised to each next timestep. Strength below 1 and at 1, a soft (blurred) mask, batch 2."""

from __future__ import annotations

import pytest
import torch
from conftest import bchw
from test_equivalence_sd15 import SEED, reference_scheduler

from diffusers_stages.engine.errors import StageError


def soft_mask(height: int, width: int) -> torch.Tensor:
    """A ComfyUI MASK [1, H, W]: a disc, blurred (values between 0 and 1 around its edge)."""
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    distance = ((y - height * 0.45) ** 2 + (x - width * 0.6) ** 2).sqrt()
    return torch.sigmoid((min(height, width) * 0.3 - distance) / 3.0)[None]


def masked_setup(nodes, models_root, model: str, folder_key: str, base_pipeline: str, inpaint_pipeline: str,
                 seed: int):
    """(graph, the inpaint pipeline on the folder's components, the encoded 64x96 picture, a soft mask, the latent
    batch of 2 carrying it)."""
    import diffusers
    from conftest import Graph, load_pipeline

    graph = Graph(nodes, model)
    base = load_pipeline(base_pipeline, models_root[folder_key])
    pipe = getattr(diffusers, inpaint_pipeline)(**base.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.shipped_scheduler = base.shipped_scheduler
    torch.manual_seed(seed)
    raw = graph.encode_image(torch.rand(1, 64, 96, 3))
    mask = soft_mask(64, 96)
    return graph, pipe, raw, mask, {"samples": raw["samples"].repeat(2, 1, 1, 1), "noise_mask": mask}


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_sd15_noise_mask_equals_stable_diffusion_inpaint_pipeline(sd1_graph, sd1_pipe, strength):
    from diffusers import StableDiffusionInpaintPipeline

    torch.manual_seed(3)
    image = torch.rand(1, 64, 96, 3)
    mask = soft_mask(64, 96)
    raw = sd1_graph.encode_image(image)
    latent = {"samples": raw["samples"].repeat(2, 1, 1, 1), "noise_mask": mask.reshape(-1, 1, 64, 96)}
    guider = sd1_graph.guider("a photo of a cat", "blurry")
    ours = sd1_graph.denoise(guider, sd1_graph.scheduler("euler", "normal"), latent, seed=SEED, steps=5,
                             denoise=strength)
    pictures = sd1_graph.decode(ours)

    pipe = StableDiffusionInpaintPipeline(**sd1_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    # the encoded image as our VAE Encode gives it (the posterior's mode), scaled as the pipeline scales latents
    scaled = raw["samples"] * pipe.vae.config.scaling_factor
    for output_type in ("latent", "pt"):
        pipe.scheduler = reference_scheduler(sd1_pipe, "euler", "normal", SEED)
        ref = pipe("a photo of a cat", negative_prompt="blurry", image=scaled, mask_image=mask[None],
                   masked_image_latents=scaled, height=64, width=96, strength=strength, num_inference_steps=5,
                   guidance_scale=7.5, num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(SEED),
                   output_type=output_type).images
        if output_type == "latent":
            assert torch.equal(ours["samples"], ref / pipe.vae.config.scaling_factor)
        else:
            assert torch.equal(bchw(pictures), ref)
    outside = torch.nn.functional.interpolate((mask[None] < 0.5).float(), size=(8, 12))
    kept = ours["samples"] * outside - raw["samples"] * outside  # outside the mask: the image itself (up to the
    assert kept.abs().max() < 1e-6  # rounding of raw -> x VAE scale -> / VAE scale, which is not exact in fp32


def test_noise_mask_of_another_batch_or_shape_is_refused(sd1_graph):
    raw = sd1_graph.encode_image(torch.rand(2, 64, 64, 3))
    guider = sd1_graph.guider("a photo of a cat", "blurry")
    scheduler = sd1_graph.scheduler("euler", "normal")
    with pytest.raises(StageError, match="latent: its noise mask holds 3 masks for a batch of 2 latents.*Fix: "):
        sd1_graph.denoise(guider, scheduler, {**raw, "noise_mask": torch.ones(3, 1, 64, 64)}, steps=2, denoise=0.5)
    with pytest.raises(StageError, match=r"latent: its noise mask has the shape \(1, 3, 64, 64\).*Fix: "):
        sd1_graph.denoise(guider, scheduler, {**raw, "noise_mask": torch.ones(1, 3, 64, 64)}, steps=2, denoise=0.5)


def test_noise_mask_of_another_size_is_resized_as_the_pipeline_resizes_it(sd1_graph):
    """A mask made for a picture twice the size: resized to the image (nearest), as the mask processor does."""
    torch.manual_seed(3)
    raw = sd1_graph.encode_image(torch.rand(1, 64, 96, 3))
    mask = soft_mask(64, 96)
    guider = sd1_graph.guider("a photo of a cat", "blurry")
    runs = []
    for noise_mask in (mask, torch.nn.functional.interpolate(mask[None], size=(128, 192))[0]):
        runs.append(sd1_graph.denoise(guider, sd1_graph.scheduler("euler", "normal"),
                                      {**raw, "noise_mask": noise_mask}, seed=SEED, steps=3, denoise=0.7)["samples"])
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_flux_noise_mask_equals_flux_inpaint_pipeline(nodes, models_root, strength):
    """Flow matching: the image re-noised with scale_noise, latents packed (the blend is per element, so packing
    does not change it)."""
    from conftest import Graph, load_pipeline
    from diffusers import FluxInpaintPipeline
    from test_equivalence_flux import PROMPT, flux_guider

    graph = Graph(nodes, "diffusers/tiny-flux")
    flux_pipe = load_pipeline("FluxPipeline", models_root["flux_folder"])
    torch.manual_seed(4)
    raw = graph.encode_image(torch.rand(1, 64, 96, 3))
    mask = soft_mask(64, 96)
    latent = {"samples": raw["samples"].repeat(2, 1, 1, 1), "noise_mask": mask}
    ours = graph.denoise(flux_guider(graph), graph.default_scheduler, latent, seed=SEED, steps=5, denoise=strength)

    pipe = FluxInpaintPipeline(**flux_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    denoiser = graph.denoiser
    scaled = (raw["samples"] - denoiser.latent_shift) * denoiser.latent_scale  # as the pipeline encodes
    ref = pipe(PROMPT, image=scaled, mask_image=mask[None], masked_image_latents=scaled, strength=strength,
               num_inference_steps=5, guidance_scale=3.5, height=64, width=96, num_images_per_prompt=2,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(graph.decode(ours)), ref)


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_sdxl_noise_mask_equals_stable_diffusion_xl_inpaint_pipeline(nodes, models_root, strength):
    graph, pipe, raw, mask, latent = masked_setup(nodes, models_root, "diffusers/tiny-sdxl", "sdxl_folder",
                                                  "StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline", 5)
    guider = graph.guider("a photo of a cat", "", cfg=6.0)
    latent = {"samples": raw["samples"].repeat(2, 1, 1, 1), "noise_mask": mask}
    ours = graph.denoise(guider, graph.scheduler("euler_ancestral", "normal"), latent, seed=SEED, steps=5,
                         denoise=strength)
    pipe.scheduler = reference_scheduler(pipe, "euler_ancestral", "normal", SEED)
    scaled = raw["samples"] * pipe.vae.config.scaling_factor
    ref = pipe("a photo of a cat", negative_prompt="", image=scaled, mask_image=mask[None],
               masked_image_latents=scaled, height=64, width=96, strength=strength, num_inference_steps=5,
               guidance_scale=6.0, num_images_per_prompt=2, output_type="latent",
               generator=torch.Generator("cpu").manual_seed(SEED)).images
    assert torch.equal(ours["samples"], ref / pipe.vae.config.scaling_factor)


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_sd3_noise_mask_equals_stable_diffusion_3_inpaint_pipeline(nodes, models_root, strength):
    from test_equivalence_sd3 import PROMPT

    graph, pipe, raw, mask, latent = masked_setup(nodes, models_root, "diffusers/tiny-sd3", "sd3_folder",
                                                  "StableDiffusion3Pipeline", "StableDiffusion3InpaintPipeline", 8)
    ours = graph.denoise(graph.guider(PROMPT, "blurry", cfg=5.0), graph.default_scheduler, latent, seed=SEED,
                         steps=5, denoise=strength)
    denoiser = graph.denoiser
    scaled = (raw["samples"] - denoiser.latent_shift) * denoiser.latent_scale
    # latents compared: the inpaint pipeline (diffusers 0.42) decodes latents / scaling_factor without adding the
    # VAE's shift_factor back (its img2img and txt2img pipelines add it), so its pictures are off by that shift
    ref = pipe(PROMPT, negative_prompt="blurry", image=scaled, mask_image=mask[None], masked_image_latents=scaled,
               height=64, width=96, strength=strength, num_inference_steps=5, guidance_scale=5.0,
               num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent").images
    assert torch.equal(ours["samples"], ref / denoiser.latent_scale + denoiser.latent_shift)


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_img2img_step_count_rounds_as_the_familys_pipeline(nodes, models_root, family):
    """4 steps at strength 0.6: the SD img2img pipeline runs int(2.4) = 2 steps, the flow ones 4 - int(1.6) = 3."""
    from conftest import Graph, load_pipeline
    from diffusers import FluxImg2ImgPipeline, StableDiffusionImg2ImgPipeline

    graph = Graph(nodes, "diffusers/tiny-sd15" if family == "sd15" else "diffusers/tiny-flux")
    torch.manual_seed(4)
    raw = graph.encode_image(torch.rand(1, 64, 64, 3))
    denoiser = graph.denoiser
    scaled = (raw["samples"] - denoiser.latent_shift) * denoiser.latent_scale
    if family == "sd15":
        pipe = StableDiffusionImg2ImgPipeline(**load_pipeline("StableDiffusionPipeline",
                                                              models_root["sd1_folder"]).components)
        guider = graph.guider("a photo of a cat", "blurry")
        ours = graph.denoise(guider, graph.default_scheduler, raw, seed=SEED, steps=4, denoise=0.6)
        kwargs = {"negative_prompt": "blurry", "guidance_scale": 7.5}
    else:
        from test_equivalence_flux import PROMPT, flux_guider

        pipe = FluxImg2ImgPipeline(**load_pipeline("FluxPipeline", models_root["flux_folder"]).components)
        ours = graph.denoise(flux_guider(graph), graph.default_scheduler, raw, seed=SEED, steps=4, denoise=0.6)
        kwargs = {"guidance_scale": 3.5}
    pipe.set_progress_bar_config(disable=True)
    prompt = "a photo of a cat" if family == "sd15" else PROMPT
    ref = pipe(prompt, image=scaled, strength=0.6, num_inference_steps=4, height=64, width=64, output_type="pt",
               generator=torch.Generator("cpu").manual_seed(SEED), **kwargs).images
    assert torch.equal(bchw(graph.decode(ours)), ref)



@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_qwen_image_noise_mask_equals_qwen_image_inpaint_pipeline(nodes, models_root, strength):
    """Qwen-Image (true CFG, latents normalised per channel): given our latents through a bypassed image processor,
    as its img2img test gives them."""
    from test_equivalence_qwen_image import NEGATIVE, PROMPT

    graph, pipe, raw, mask, latent = masked_setup(nodes, models_root, "diffusers/tiny-qwen-image", "qwen_image_folder",
                                                  "QwenImagePipeline", "QwenImageInpaintPipeline", 4)
    guider = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), negative=graph.encode(NEGATIVE),
                                           cfg=3.0)[0]
    ours = graph.denoise(guider, graph.default_scheduler, latent, seed=SEED, steps=5, denoise=strength)
    pipe.image_processor.preprocess = lambda image, *args, **kwargs: image
    normalised = graph.denoiser.to_model_space(raw["samples"])
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=3.0, image=normalised, mask_image=mask[None],
               masked_image_latents=normalised, strength=strength, num_inference_steps=5, height=64, width=96,
               num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(graph.decode(ours)), ref)



INPAINTING_UNETS = {"sd15": ("diffusers/tiny-sd15-inpainting", "sd1_inpainting_folder", "StableDiffusionPipeline",
                             "StableDiffusionInpaintPipeline"),
                    "sdxl": ("diffusers/tiny-sdxl-inpainting", "sdxl_inpainting_folder", "StableDiffusionXLPipeline",
                             "StableDiffusionXLInpaintPipeline")}


@pytest.mark.parametrize("strength", [0.6, 1.0])
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_inpainting_unet_with_inpaint_conditioning_equals_stable_diffusion_inpaint_pipeline(nodes, models_root,
                                                                                           family, strength):
    """A 9-channel inpainting U-Net (SD1.5, SDXL): Inpaint Conditioning gives it the mask and the masked image's
    latents as input channels (no blend), as StableDiffusion(XL)InpaintPipeline does; it is given the same encoded
    latents."""
    graph, pipe, _, mask, _ = masked_setup(nodes, models_root, *INPAINTING_UNETS[family], 3)
    assert graph.denoiser.module.config.in_channels == 9
    torch.manual_seed(9)
    image = torch.rand(1, 64, 96, 3)
    latent = nodes["DS_InpaintConditioning"].execute(vae=graph.vae, pixels=image, mask=mask)[0]
    latent = {**latent, "samples": latent["samples"].repeat(2, 1, 1, 1)}
    from diffusers_stages.engine.masks import masked_pixels  # the masked picture is the pipeline's, in [-1, 1]

    condition = pipe.mask_processor.preprocess(mask[None], height=64, width=96)
    theirs = pipe.image_processor.preprocess(image.movedim(-1, 1), height=64, width=96) * (condition < 0.5)
    assert torch.equal(masked_pixels(image, mask).movedim(-1, 1) * 2 - 1, theirs)
    guider = graph.guider("a photo of a cat", "blurry")
    ours = graph.denoise(guider, graph.scheduler("euler", "normal"), latent, seed=SEED, steps=5, denoise=strength)

    pipe.scheduler = reference_scheduler(pipe, "euler", "normal", SEED)
    scale = pipe.vae.config.scaling_factor
    ref = pipe("a photo of a cat", negative_prompt="blurry", image=latent["samples"][:1] * scale,
               mask_image=mask[None], masked_image_latents=latent["diffusers_stages_masked_image"] * scale,
               height=64, width=96, strength=strength, num_inference_steps=5, guidance_scale=7.5,
               num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(SEED),
               output_type="latent").images
    assert torch.equal(ours["samples"], ref / scale)


def test_inpainting_unet_without_inpaint_conditioning_is_refused(nodes):
    from conftest import Graph

    graph = Graph(nodes, "diffusers/tiny-sd15-inpainting")
    raw = graph.encode_image(torch.rand(1, 64, 64, 3))
    assert raw["samples"].shape[1] == 4 and graph.empty()["samples"].shape[1] == 4  # its latents have 4 channels
    with pytest.raises(StageError, match="latent: this Stable Diffusion 1.x/2.x model is an inpainting model.*Fix: "
                                         "make the latent with Inpaint Conditioning"):
        graph.denoise(graph.guider("a cat", ""), graph.default_scheduler, {**raw, "noise_mask": torch.ones(1, 64, 64)},
                      steps=2)


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_flux_fill_with_inpaint_conditioning_equals_flux_fill_pipeline(nodes, models_root, strength):
    """Flux.1 Fill (384 input channels): Inpaint Conditioning's masked-image latents packed and the binarised mask as
    64 channels per latent cell, packed, joined to the latents' channels every step, no blend — as FluxFillPipeline.
    The pipeline is given the same encoded latents (it refuses image and masked_image_latents together, though it
    uses both: its input check is skipped); the mask channels come from its own prepare_mask_latents (which scales
    the raw masked-image latents itself)."""
    from test_equivalence_flux import PROMPT, flux_guider

    from diffusers_stages.engine.masks import MASKED_IMAGE

    graph, pipe, _, mask, _ = masked_setup(nodes, models_root, "diffusers/tiny-flux-fill", "flux_fill_folder",
                                           "FluxFillPipeline", "FluxFillPipeline", 6)
    assert graph.denoiser.module.config.in_channels == 384 and graph.empty()["samples"].shape[1] == 16
    torch.manual_seed(10)
    image = torch.rand(1, 64, 96, 3)
    latent = nodes["DS_InpaintConditioning"].execute(vae=graph.vae, pixels=image, mask=mask)[0]
    latent = {**latent, "samples": latent["samples"].repeat(2, 1, 1, 1)}
    ours = graph.denoise(flux_guider(graph, guidance=30.0), graph.default_scheduler, latent, seed=SEED, steps=5,
                         denoise=strength)

    denoiser = graph.denoiser
    scaled = (latent["samples"][:1] - denoiser.latent_shift) * denoiser.latent_scale
    pipe.check_inputs = lambda *args, **kwargs: None
    mask_channels, masked_packed = pipe.prepare_mask_latents(
        pipe.mask_processor.preprocess(mask[None], height=64, width=96), latent[MASKED_IMAGE], 1, 16, 2, 64, 96,
        torch.float32, "cpu", None)
    ref = pipe(PROMPT, image=scaled, masked_image_latents=torch.cat((masked_packed, mask_channels), dim=-1),
               strength=strength, num_inference_steps=5, guidance_scale=30.0, height=64, width=96,
               num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(graph.decode(ours)), ref)


def test_flux_fill_file_loads_as_the_fill_transformer(nodes, models_root):
    """flux1-fill-dev.safetensors (Black Forest Labs' layout) in diffusion_models: the same transformer as the
    folder's (384 input channels, 64 out), and its LATENT has 16 channels."""
    from conftest import Graph

    denoiser, _ = nodes["DS_LoadDiffusionModel"].execute(model_name="tiny-flux1-fill-dev.safetensors", dtype="fp32")
    folder = Graph(nodes, "diffusers/tiny-flux-fill").denoiser.module
    assert (denoiser.module.config.in_channels, denoiser.module.config.out_channels) == (384, 64)
    theirs = folder.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in denoiser.module.state_dict().items())
    assert denoiser.family.is_inpainting_model(denoiser) and denoiser.family.latent_channels_of(denoiser) == 16


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_z_image_noise_mask_equals_z_image_inpaint_pipeline(nodes, models_root, strength):
    """ZImageInpaintPipeline encodes its picture itself, sampling the VAE posterior with the run's generator (before
    the noise); our VAE Encode takes the posterior's mode, as core's. Given the mode (its retrieve_latents asked for
    the argmax), the pipeline draws the same noise and equals our graph: from a PIL picture, soft mask, batch 2.
    Its guidance_scale is our cfg - 1 (test_equivalence_z_image). Latents compared: the pipeline keeps the encoded
    picture in the VAE's channels-last memory layout through its batch concatenation and blend, and a CPU convolution
    rounds differently by layout (2.6e-6 after decoding), which is not a difference in the computation."""
    from diffusers.pipelines.z_image import pipeline_z_image_inpaint
    from test_equivalence_sd15 import pictures
    from test_equivalence_z_image import NEGATIVE, PROMPT

    graph, pipe, _, mask, _ = masked_setup(nodes, models_root, "diffusers/tiny-z-image", "zimage_folder",
                                           "ZImagePipeline", "ZImageInpaintPipeline", 11)
    pil, image = pictures(1, 64, 96, 12)
    latent = {"samples": graph.encode_image(image)["samples"].repeat(2, 1, 1, 1), "noise_mask": mask}
    ours = graph.denoise(graph.guider(PROMPT, NEGATIVE, 4.0), graph.default_scheduler, latent, seed=SEED, steps=5,
                         denoise=strength)

    sampled = pipeline_z_image_inpaint.retrieve_latents
    pipeline_z_image_inpaint.retrieve_latents = lambda output, generator=None, sample_mode="sample": sampled(
        output, generator, "argmax")
    try:
        ref = pipe(PROMPT, negative_prompt=NEGATIVE, image=pil[0], mask_image=mask[None], strength=strength,
                   guidance_scale=3.0, num_inference_steps=5, height=64, width=96, num_images_per_prompt=2,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent").images
    finally:
        pipeline_z_image_inpaint.retrieve_latents = sampled
    assert torch.equal(ours["samples"], graph.denoiser.to_raw_space(ref))


def test_inpaint_conditioning_crops_the_mask_with_the_picture(nodes, sd1_graph):
    """A picture that is not a multiple of 8: VAE Encode centre-crops it; its mask (of another size too) is resized
    to the picture and cropped the same way, so mask and latents stay aligned."""
    torch.manual_seed(13)
    image = torch.rand(1, 70, 100, 3)
    mask = soft_mask(70, 100)
    latent = nodes["DS_InpaintConditioning"].execute(vae=sd1_graph.vae, pixels=image, mask=mask[:, ::2, ::2])[0]
    resized = torch.nn.functional.interpolate(mask[None, :, ::2, ::2], size=(70, 100))[0]
    assert torch.equal(latent["noise_mask"], resized[:, 3:67, 2:98][:, None])
    assert torch.equal(latent["samples"], sd1_graph.encode_image(image[:, 3:67, 2:98])["samples"])


def test_pad_for_outpainting_stand_in_behaves_as_cores():
    """The headless Pad Image for Outpainting: mid-grey canvas, mask 1 outside, fading in over `feathering` pixels
    along the padded sides as ((f - d) / f)^2 (values checked against core's node, computed the same way)."""
    from diffusers_stages.runner.core_nodes import ImagePadForOutpaint

    image = torch.rand(1, 40, 56, 3)
    canvas, mask = ImagePadForOutpaint().pad(image, left=8, top=0, right=16, bottom=24, feathering=10)
    assert canvas.shape == (1, 64, 80, 3) and mask.shape == (1, 64, 80)
    assert torch.equal(canvas[:, :40, 8:64], image) and bool((canvas[:, 40:] == 0.5).all())
    assert bool((mask[:, 40:] == 1).all()) and bool((mask[:, :, :8] == 1).all())
    row = mask[0, 10, 8:64]  # a row far from the bottom: fades from the left and right edges only
    assert row[0] == 1.0 and row[5] == 0.25 and row[10] == 0 and row[-5] == 0.25
    assert float(row[-1]) == pytest.approx(0.81) and float(mask[0, 39, 30]) == pytest.approx(0.81)
    assert mask[0, 0, 30] == 0  # the bottom is padded (fades in), the top is not
    _, unfeathered = ImagePadForOutpaint().pad(image, 8, 8, 8, 8, feathering=0)
    assert bool((unfeathered[:, 8:48, 8:64] == 0).all())


def test_a_latent_the_transformer_cannot_patch_is_refused_and_the_models_vae_crops_to_fit(nodes):
    """Flux works on 2x2 latent patches (16 px): the VAE of a loaded Flux model crops a 72x80 picture to 64x80; a
    latent of 9x10 cells (a VAE loaded alone crops to its 8 px cells) is refused by name, not a shape error."""
    from conftest import Graph
    from test_equivalence_flux import flux_guider

    graph = Graph(nodes, "diffusers/tiny-flux")
    assert graph.encode_image(torch.rand(1, 72, 80, 3))["samples"].shape == (1, 16, 8, 10)
    with pytest.raises(StageError, match="latent: the latent is 80x72 px, but Flux.1 makes pictures in multiples of "
                                         "16 px.*Fix: scale or crop the picture"):
        graph.denoise(flux_guider(graph), graph.default_scheduler, {"samples": torch.rand(1, 16, 9, 10)}, steps=2,
                      denoise=0.5)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_single_file_inpainting_checkpoints_load_as_their_folders(nodes, models_root, family):
    """sd-v1-5-inpainting / sd_xl inpainting single files (original LDM layout, 9-channel conv_in): the same U-Net as
    the diffusers folder, taken as an inpainting model."""
    import os

    from conftest import Graph, load_pipeline

    from diffusers_stages.tiny.ldm_export import save_ldm_checkpoint, save_sdxl_checkpoint

    model, folder_key, base, _ = INPAINTING_UNETS[family]
    pipe = load_pipeline(base, models_root[folder_key])
    name = f"checkpoints/tiny-{family}-inpainting.safetensors"
    (save_ldm_checkpoint if family == "sd15" else save_sdxl_checkpoint)(pipe, os.path.join(models_root["root"], name))
    single = Graph(nodes, name).denoiser
    assert single.family.is_inpainting_model(single) and single.family.latent_channels_of(single) == 4
    theirs = Graph(nodes, model).denoiser.module.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in single.module.state_dict().items())
