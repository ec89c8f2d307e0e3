"""Reference-image editing: the Reference Image node attaches VAE-encoded pictures to the prompts; Denoise gives them
to the model as extra tokens after the latents', as FluxKontextPipeline (Flux.1 Kontext, one reference) and the
Flux.2 pipelines (any number, time coordinates 10, 20, …) do. torch.equal against the pipelines, CPU fp32."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import Graph, bchw, load_pipeline
from PIL import Image
from test_equivalence_sd15 import pictures

from diffusers_stages.engine.errors import StageError

SEED = 21


def picture(height: int, width: int, seed: int) -> tuple[Image.Image, torch.Tensor]:
    """(a PIL picture, the same as a ComfyUI IMAGE [1, H, W, 3] as Load Image gives it)."""
    pil, image = pictures(1, height, width, seed)
    return pil[0], image


@contextlib.contextmanager
def vae_pictures_at_their_own_size(area: int):
    """QwenImageEditPlusPipeline brings the VAE's pictures to about 1 megapixel (VAE_IMAGE_SIZE); our node uses a
    picture at its own size. For the comparison the pipeline's area is set to the pictures' own."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus

    saved = pipeline_qwenimage_edit_plus.VAE_IMAGE_SIZE
    pipeline_qwenimage_edit_plus.VAE_IMAGE_SIZE = area
    try:
        yield
    finally:
        pipeline_qwenimage_edit_plus.VAE_IMAGE_SIZE = saved


def referenced(nodes, graph, image, prompt, negative=None, guidance=None):
    positive = graph.encode(prompt)
    if guidance is not None:
        positive = nodes["DS_FluxGuidance"].execute(conditioning=positive, guidance=guidance)[0]
    negative = None if negative is None else graph.encode(negative)
    return nodes["DS_ReferenceImage"].execute(positive=positive, vae=graph.vae, image=image, negative=negative)


def two_references(nodes, model, sizes, prompt, negative, cfg, batch):
    """(graph, the PIL pictures, our latent): two pictures of ``sizes`` attached by two chained Reference Image nodes
    to both prompts, CFG, a 64 x 64 batch, 4 steps."""
    graph = Graph(nodes, model)
    pictures = [picture(height, width, seed) for seed, (height, width) in enumerate(sizes, 2)]
    positive, negative = referenced(nodes, graph, pictures[0][1], prompt, negative)
    positive, negative = nodes["DS_ReferenceImage"].execute(positive=positive, vae=graph.vae, image=pictures[1][1],
                                                            negative=negative)
    guider = nodes["DS_CFGGuider"].execute(positive=positive, negative=negative, cfg=cfg)[0]
    latent = graph.denoise(guider, graph.default_scheduler, graph.empty(64, 64, batch), seed=SEED, steps=4)
    return graph, [pil for pil, _ in pictures], latent


@pytest.mark.parametrize("batch", [1, 2])
def test_flux_kontext_reference_equals_flux_kontext_pipeline(nodes, models_root, batch):
    """A 96x64 reference for a 64x64 picture (its own size: the tokens get their own rows/columns, index 1). The
    pipeline scales the size it is asked for to max_area (1 megapixel by default) and the reference to Kontext's
    preferred sizes (_auto_resize): both are switched off, the graph makes the sizes it is given."""
    from diffusers import FluxKontextPipeline
    from test_equivalence_flux import PROMPT

    graph = Graph(nodes, "diffusers/tiny-flux")
    pil, image = picture(64, 96, 1)
    positive, _ = referenced(nodes, graph, image, PROMPT, guidance=2.5)
    assert len(positive.references) == 1 and positive.references[0].shape == (1, 16, 8, 12)
    guider = nodes["DS_CFGGuider"].execute(positive=positive, cfg=1.0)[0]
    ours = graph.denoise(guider, graph.default_scheduler, graph.empty(64, 64, batch), seed=SEED, steps=4)

    pipe = FluxKontextPipeline(**load_pipeline("FluxPipeline", models_root["flux_folder"]).components)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompt=PROMPT, image=pil, guidance_scale=2.5, num_inference_steps=4, height=64, width=64,
               num_images_per_prompt=batch, max_area=64 * 64, _auto_resize=False,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(graph.decode(ours)), ref)


def test_flux2_references_equal_flux2_klein_pipeline(nodes, models_root):
    """Two references (chained nodes: t = 10 and 20) of other sizes, CFG (two calls, both seeing the references),
    batch 2."""
    from test_equivalence_flux2 import NEGATIVE, PROMPT, negative_embeds

    graph, (first_pil, second_pil), ours = two_references(nodes, "diffusers/tiny-flux2-klein", [(64, 96), (80, 64)],
                                                          PROMPT, NEGATIVE, cfg=3.5, batch=2)

    pipe = load_pipeline("Flux2KleinPipeline", models_root["flux2_klein_folder"])
    ref = pipe(prompt=PROMPT, image=[first_pil, second_pil], negative_prompt_embeds=negative_embeds(pipe),
               guidance_scale=3.5, num_inference_steps=4, height=64, width=64, num_images_per_prompt=2,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(graph.decode(ours)), ref)


def test_reference_refused_where_the_model_takes_none_or_fewer(nodes, sd1_graph):
    _, image = picture(64, 64, 4)
    positive, _ = referenced(nodes, sd1_graph, image, "a cat")
    guider = nodes["DS_CFGGuider"].execute(positive=positive, negative=sd1_graph.encode(""), cfg=7.5)[0]
    with pytest.raises(StageError, match="guider: its prompt carries reference images, which Stable Diffusion 1.x/2.x "
                                         "models do not take.*Fix: remove the Reference Image node"):
        sd1_graph.denoise(guider, sd1_graph.default_scheduler, sd1_graph.empty(), steps=2)

    flux = Graph(nodes, "diffusers/tiny-flux")
    positive, _ = referenced(nodes, flux, torch.cat([image, image]), "a cat")
    guider = nodes["DS_CFGGuider"].execute(positive=positive, cfg=1.0)[0]
    with pytest.raises(StageError, match="guider: it carries 2 reference images; this model's pipeline takes 1.*Fix: "
                                         "give Flux.1 Kontext one reference image"):
        flux.denoise(guider, flux.default_scheduler, flux.empty(), steps=2)

    with pytest.raises(StageError, match="image: expected an IMAGE .* of at least 16x16 pixels"):
        nodes["DS_ReferenceImage"].execute(positive=positive, vae=flux.vae, image=torch.rand(1, 8, 64, 3))


def test_reference_of_another_size_is_centre_cropped_to_16_pixel_cells(nodes):
    graph = Graph(nodes, "diffusers/tiny-flux")
    _, image = picture(70, 100, 5)
    positive, _ = referenced(nodes, graph, image, "a cat")
    cropped, _ = referenced(nodes, graph, image[:, 3:67, 2:98], "a cat")
    assert positive.references[0].shape == (1, 16, 8, 12)
    assert torch.equal(positive.references[0], cropped.references[0])


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_flux2_reference_inpainting_equals_flux2_klein_inpaint_pipeline(nodes, models_root, strength):
    """Flux2KleinInpaintPipeline = the source picture as a reference (both CFG calls) + a noise mask (its bilinear
    resize to the latent, the blend after each step). In the graph: VAE Encode + Set Latent Noise Mask's LATENT,
    Reference Image of the same picture. Soft mask, batch 2, from a PIL picture as the pipeline takes it."""
    from diffusers import Flux2KleinInpaintPipeline
    from test_equivalence_flux2 import PROMPT
    from test_inpaint import soft_mask

    graph = Graph(nodes, "diffusers/tiny-flux2-klein")
    pil, image = picture(64, 96, 6)
    mask = soft_mask(64, 96)
    positive, negative = referenced(nodes, graph, image, PROMPT, "")
    guider = nodes["DS_CFGGuider"].execute(positive=positive, negative=negative, cfg=3.5)[0]
    latent = {"samples": graph.encode_image(image)["samples"].repeat(2, 1, 1, 1), "noise_mask": mask}
    ours = graph.denoise(guider, graph.default_scheduler, latent, seed=SEED, steps=5, denoise=strength)

    pipe = Flux2KleinInpaintPipeline(**load_pipeline("Flux2KleinPipeline",
                                                     models_root["flux2_klein_folder"]).components)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompt=PROMPT, image=pil, mask_image=mask[None], strength=strength, guidance_scale=3.5,
               num_inference_steps=5, height=64, width=96, num_images_per_prompt=2,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(graph.decode(ours)), ref)


@pytest.mark.parametrize("batch", [1, 2])
def test_qwen_image_edit_plus_references_equal_qwen_image_edit_plus_pipeline(nodes, models_root, batch):
    """Two reference pictures (chained nodes) on both prompts, true CFG: the prompts are encoded again with the
    pictures through the text encoder's vision tower ("Picture 1: …", resized to about 384 x 384 as the pipeline
    does), and the pictures' latents follow the latents' tokens. The pipeline also brings the VAE's pictures to about
    1 megapixel: see vae_pictures_at_their_own_size."""
    from test_equivalence_qwen_image import NEGATIVE, PROMPT

    graph, (first_pil, second_pil), ours = two_references(nodes, "diffusers/tiny-qwen-image-edit-2509",
                                                          [(64, 96), (96, 64)], PROMPT, NEGATIVE, cfg=3.0, batch=batch)

    from transformers import Qwen2Tokenizer

    from diffusers_stages.tiny.models import qwen25vl_processor

    folder = models_root["qwen_image_edit_folder"]
    pipe = load_pipeline("QwenImageEditPlusPipeline", folder, processor=qwen25vl_processor(
        Qwen2Tokenizer.from_pretrained(f"{folder}/tokenizer")))
    with vae_pictures_at_their_own_size(64 * 96):
        ref = pipe(image=[first_pil, second_pil], prompt=PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=3.0,
                   num_inference_steps=4, height=64, width=64, num_images_per_prompt=batch,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(graph.decode(ours)), ref)


def test_qwen_image_edit_from_split_files_reads_pictures_as_the_folder(nodes):
    """qwen_2.5_vl_7b as ComfyUI keeps it (the vision tower under its original names, no processor beside it):
    the picture tokens take the tokenizer's ids and the pictures Qwen2.5-VL's own processor settings, so a prompt
    with a reference picture encodes as the Edit folder's (its processor/ settings), in fresh memory."""
    from test_equivalence_qwen_image import PROMPT

    denoiser, scheduler = nodes["DS_LoadDiffusionModel"].execute(model_name="tiny-qwen-image.safetensors",
                                                                 dtype="fp32")
    text_encoder = nodes["DS_LoadTextEncoders"].execute(family="qwenimage", llm="tiny-qwen-2.5-vl.safetensors",
                                                        dtype="fp32")[0]
    vae = nodes["DS_LoadVAE"].execute(vae_name="tiny-qwen-image-vae.safetensors", dtype="fp32")[0]
    split = Graph(nodes, None, (denoiser, text_encoder, vae, scheduler)).in_fresh_memory()
    folder = Graph(nodes, "diffusers/tiny-qwen-image-edit-2509").in_fresh_memory()
    assert text_encoder.parts[0].image_processor is None and folder.text_encoder.parts[0].image_processor is not None
    _, image = picture(64, 96, 9)
    ours, _ = referenced(nodes, split, image, PROMPT)
    theirs, _ = referenced(nodes, folder, image, PROMPT)
    assert ours.embeds.shape[1] > split.encode(PROMPT).embeds.shape[1] + 100  # the picture's tokens are in it
    assert torch.equal(ours.embeds, theirs.embeds) and torch.equal(ours.references[0], theirs.references[0])


def test_qwen_image_edit_2511_file_equals_the_pipeline_on_it(nodes, models_root):
    """Comfy-Org's 2511 file (marked by an empty __index_timestep_zero__ tensor) loads with zero_cond_t, and a
    reference edit with it equals QwenImageEditPlusPipeline run on the same modules."""
    from diffusers import QwenImageEditPlusPipeline
    from test_equivalence_qwen_image import PROMPT

    from diffusers_stages.tiny.models import qwen25vl_processor

    folder = Graph(nodes, "diffusers/tiny-qwen-image-edit-2509")
    denoiser, scheduler = nodes["DS_LoadDiffusionModel"].execute(model_name="tiny-qwen-image-edit-2511.safetensors",
                                                                 dtype="fp32")
    assert denoiser.module.config.zero_cond_t
    graph = Graph(nodes, None, (denoiser, folder.text_encoder, folder.vae, folder.default_scheduler))
    pil, image = picture(64, 96, 10)
    positive, _ = referenced(nodes, graph, image, PROMPT)
    guider = nodes["DS_CFGGuider"].execute(positive=positive, cfg=1.0)[0]
    ours = graph.denoise(guider, graph.default_scheduler, graph.empty(64, 64, 1), seed=SEED, steps=3)

    base = load_pipeline("QwenImagePipeline", models_root["qwen_image_folder"])
    pipe = QwenImageEditPlusPipeline(transformer=denoiser.module, text_encoder=folder.text_encoder.parts[0].module,
                                     vae=folder.vae.module, tokenizer=base.tokenizer, scheduler=base.scheduler,
                                     processor=qwen25vl_processor(base.tokenizer))
    pipe.set_progress_bar_config(disable=True)
    with vae_pictures_at_their_own_size(64 * 96):
        ref = pipe(image=[pil], prompt=PROMPT, num_inference_steps=3, height=64, width=64,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(graph.decode(ours)), ref)
