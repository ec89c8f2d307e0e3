"""Reference-image editing: the Reference Image node attaches VAE-encoded pictures to the prompts; Denoise gives them
to the model as extra tokens after the latents', as FluxKontextPipeline (Flux.1 Kontext, one reference) and the
Flux.2 pipelines (any number, time coordinates 10, 20, …) do. torch.equal against the pipelines, CPU fp32."""

from __future__ import annotations

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


def referenced(nodes, graph, image, prompt, negative=None, guidance=None):
    positive = graph.encode(prompt)
    if guidance is not None:
        positive = nodes["DS_FluxGuidance"].execute(conditioning=positive, guidance=guidance)[0]
    negative = None if negative is None else graph.encode(negative)
    return nodes["DS_ReferenceImage"].execute(positive=positive, vae=graph.vae, image=image, negative=negative)


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

    graph = Graph(nodes, "diffusers/tiny-flux2-klein")
    first_pil, first = picture(64, 96, 2)
    second_pil, second = picture(80, 64, 3)
    positive, negative = referenced(nodes, graph, first, PROMPT, NEGATIVE)
    positive, negative = nodes["DS_ReferenceImage"].execute(positive=positive, vae=graph.vae, image=second,
                                                            negative=negative)
    guider = nodes["DS_CFGGuider"].execute(positive=positive, negative=negative, cfg=3.5)[0]
    ours = graph.denoise(guider, graph.default_scheduler, graph.empty(64, 64, 2), seed=SEED, steps=4)

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
