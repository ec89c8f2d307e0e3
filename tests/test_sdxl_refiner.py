"""The SDXL refiner (a StableDiffusionXLImg2ImgPipeline folder or single file with CLIP-G alone and aesthetic-score
time ids) and the base -> refiner hand-off (diffusers' denoising_end / denoising_start), against the two SDXL
pipelines chained."""

from __future__ import annotations

import pytest
import torch
from conftest import Graph, bchw, load_pipeline

from diffusers_stages.engine.errors import StageError
from diffusers_stages.nodes.denoise import HANDOFF

PROMPT, NEGATIVE, SEED, STEPS, SPLIT, CFG = "a photo of a cat", "blurry", 7, 8, 0.75, 5.0


@pytest.fixture(scope="module")
def base(nodes):
    return Graph(nodes, "diffusers/tiny-sdxl")


@pytest.fixture(scope="module")
def refiner(nodes):
    return Graph(nodes, "diffusers/tiny-sdxl-refiner")


def run(graph, latent, score=None, **window):
    positive = graph.encode(PROMPT)
    if score is not None:
        positive = graph.nodes["DS_AestheticScore"].execute(conditioning=positive, aesthetic_score=score)[0]
    guider = graph.nodes["DS_CFGGuider"].execute(positive=positive, negative=graph.encode(NEGATIVE), cfg=CFG)[0]
    return graph.nodes["DS_Denoise"].execute(denoiser=graph.denoiser, guider=guider, scheduler=graph.default_scheduler,
                                             latent=latent, seed=SEED, steps=STEPS, **window)[0]


def reference_base(models_root, **kwargs):
    pipe = load_pipeline("StableDiffusionXLPipeline", models_root["sdxl_folder"])
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, width=64, height=64, guidance_scale=CFG,
                generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent", **kwargs).images


def reference_refiner(models_root, latents, **kwargs):
    pipe = load_pipeline("StableDiffusionXLImg2ImgPipeline", models_root["sdxl_refiner_folder"])
    return pipe(PROMPT, negative_prompt=NEGATIVE, image=latents, num_inference_steps=STEPS, guidance_scale=CFG,
                generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", **kwargs).images


def test_base_to_refiner_hand_off_equals_the_two_pipelines_chained(base, refiner, models_root):
    handed = run(base, base.empty(), denoising_end=SPLIT)
    latents = reference_base(models_root, denoising_end=SPLIT)
    assert torch.equal(handed[HANDOFF]["model"], latents)  # the base's half, in the pipeline's (scaled) space
    ours = bchw(refiner.decode(run(refiner, handed, denoising_start=SPLIT)))
    assert torch.equal(ours, reference_refiner(models_root, latents, denoising_start=SPLIT))
    scored = bchw(refiner.decode(run(refiner, handed, score=7.0, denoising_start=SPLIT)))
    assert torch.equal(scored, reference_refiner(models_root, latents, denoising_start=SPLIT, aesthetic_score=7.0))
    assert not torch.equal(scored, ours)


def test_refiner_as_image_to_image_on_the_base_output(base, refiner, models_root):
    """The other common use: the base denoises fully, the refiner runs img2img on its latents (strength 0.3)."""
    full = run(base, base.empty())
    latents = reference_base(models_root)
    assert torch.equal(full[HANDOFF]["model"], latents)
    ours = bchw(refiner.decode(run(refiner, full, denoise=0.3)))
    assert torch.equal(ours, reference_refiner(models_root, latents, strength=0.3))


def test_refiner_single_file_equals_its_folder(nodes, base, refiner):
    single = Graph(nodes, "checkpoints/tiny-sdxl-refiner.safetensors")
    assert len(single.text_encoder.parts) == 1 and not single.text_encoder.force_zeros_for_empty_prompt
    handed = run(base, base.empty(), denoising_end=SPLIT)
    folder_image = bchw(refiner.decode(run(refiner.in_fresh_memory(), handed, denoising_start=SPLIT)))
    single_image = bchw(single.decode(run(single.in_fresh_memory(), handed, denoising_start=SPLIT)))
    assert torch.equal(single_image, folder_image)


def test_refiner_without_negative_encodes_an_empty_prompt(refiner, base, models_root):
    """The refiner's pipeline config has force_zeros_for_empty_prompt false: no negative = an encoded ''."""
    handed = run(base, base.empty(), denoising_end=SPLIT)
    guider = refiner.nodes["DS_CFGGuider"].execute(positive=refiner.encode(PROMPT), cfg=CFG)[0]
    ours = bchw(refiner.decode(refiner.nodes["DS_Denoise"].execute(
        denoiser=refiner.denoiser, guider=guider, scheduler=refiner.default_scheduler, latent=handed, seed=SEED,
        steps=STEPS, denoising_start=SPLIT)[0]))
    pipe = load_pipeline("StableDiffusionXLImg2ImgPipeline", models_root["sdxl_refiner_folder"])
    reference = pipe(PROMPT, negative_prompt=None, image=handed[HANDOFF]["model"], num_inference_steps=STEPS,
                     guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt",
                     denoising_start=SPLIT).images
    assert torch.equal(ours, reference)


def test_refiner_and_base_wired_the_wrong_way_are_refused(nodes, base, refiner):
    with pytest.raises(StageError, match="Denoise.*guider") as info:
        nodes["DS_Denoise"].execute(denoiser=refiner.denoiser, guider=base.guider(PROMPT, NEGATIVE, CFG),
                                    scheduler=refiner.default_scheduler, latent=refiner.empty(), seed=1, steps=2)
    assert "encoded by an SDXL base model's (CLIP-L + CLIP-G) text encoder" in str(info.value)
    assert "a base model and a refiner each need their own text encoder" in str(info.value)
    with pytest.raises(StageError) as info:
        nodes["DS_Denoise"].execute(denoiser=base.denoiser, guider=refiner.guider(PROMPT, NEGATIVE, CFG),
                                    scheduler=base.default_scheduler, latent=base.empty(), seed=1, steps=2)
    assert "encoded by an SDXL refiner's (CLIP-G only) text encoder" in str(info.value)
    scored = nodes["DS_AestheticScore"].execute(conditioning=base.encode(PROMPT), aesthetic_score=6.0)[0]
    guider = nodes["DS_CFGGuider"].execute(positive=scored, negative=base.encode(NEGATIVE), cfg=CFG)[0]
    with pytest.raises(StageError, match="aesthetic score was set, which only the SDXL refiner takes"):
        nodes["DS_Denoise"].execute(denoiser=base.denoiser, guider=guider, scheduler=base.default_scheduler,
                                    latent=base.empty(), seed=1, steps=2)
    with pytest.raises(StageError, match="denoise below 1.0 and a denoising_start both"):
        run(refiner, run(base, base.empty(), denoising_end=SPLIT), denoise=0.5, denoising_start=SPLIT)
    with pytest.raises(StageError, match="denoising_start: the window 0.8..0.5"):
        run(base, base.empty(), denoising_start=0.8, denoising_end=0.5)
    flux = Graph(nodes, "diffusers/tiny-flux")
    with pytest.raises(StageError, match="Flux.1 takes no aesthetic score"):
        nodes["DS_AestheticScore"].execute(conditioning=flux.encode(PROMPT), aesthetic_score=6.0)
