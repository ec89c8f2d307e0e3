"""diffusers' guiders as nodes (CFG-Zero*, APG), against the code that runs them in diffusers: the SDXL modular
pipeline (StableDiffusionXLModularPipeline) with that guider as its ``guider`` component. The modular loop runs the
positive and negative predictions as two calls, positive first; the guidance object does the same for these
methods (plain CFG stays batched, as the classic pipelines run it)."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import Graph, bchw

PROMPT, NEGATIVE, SEED, STEPS = "a photo of a cat", "blurry", 4, 5


@pytest.fixture(scope="module")
def modular(models_root):
    from diffusers import ModularPipeline

    logging.disable(logging.ERROR)  # the modular loader logs tracebacks for the SDXL folder's null components
    try:
        pipe = ModularPipeline.from_pretrained(models_root["sdxl_folder"], local_files_only=True)
        pipe.load_components(dtype=torch.float32)
    finally:
        logging.disable(logging.NOTSET)
    return pipe


def reference(modular, guider):
    modular.update_components(guider=guider)
    return modular(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, width=64, height=64,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", output="images")


def ours(nodes, node_id, **settings):
    graph = Graph(nodes, "diffusers/tiny-sdxl")
    guider = nodes[node_id].execute(positive=graph.encode(PROMPT), negative=graph.encode(NEGATIVE), **settings)[0]
    latent = graph.denoise(guider, graph.default_scheduler, graph.empty(), seed=SEED, steps=STEPS)
    return bchw(graph.decode(latent))


@pytest.mark.parametrize("settings, options", [
    ({"cfg": 5.0}, {"zero_init_steps": 1}),
    ({"cfg": 7.0, "zero_init_steps": 0, "guidance_rescale": 0.5, "end_percent": 0.6},
     {"zero_init_steps": 0, "guidance_rescale": 0.5, "stop": 0.6}),
])
def test_cfg_zero_star_equals_the_modular_pipeline(nodes, modular, settings, options):
    from diffusers.guiders import ClassifierFreeZeroStarGuidance

    scale = settings["cfg"]
    expected = reference(modular, ClassifierFreeZeroStarGuidance(guidance_scale=scale, **options))
    assert torch.equal(ours(nodes, "DS_CFGZeroStarGuider", **settings), expected)


@pytest.mark.parametrize("settings, options", [
    ({"cfg": 6.0}, {}),
    ({"cfg": 9.0, "eta": 0.0, "norm_threshold": 2.5, "momentum": -0.5, "start_percent": 0.2},
     {"eta": 0.0, "adaptive_projected_guidance_rescale": 2.5, "adaptive_projected_guidance_momentum": -0.5,
      "start": 0.2}),
])
def test_apg_equals_the_modular_pipeline(nodes, modular, settings, options):
    from diffusers.guiders import AdaptiveProjectedGuidance

    expected = reference(modular, AdaptiveProjectedGuidance(guidance_scale=settings["cfg"], **options))
    assert torch.equal(ours(nodes, "DS_APGGuider", **settings), expected)


def test_the_guiders_change_the_image_and_cfg_stays_batched(nodes):
    plain = ours(nodes, "DS_CFGGuider", cfg=5.0)
    zero_star = ours(nodes, "DS_CFGZeroStarGuider", cfg=5.0)
    apg = ours(nodes, "DS_APGGuider", cfg=5.0, eta=0.0)
    assert not torch.equal(plain, zero_star) and not torch.equal(plain, apg)
