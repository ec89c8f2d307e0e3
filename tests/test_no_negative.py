"""No negative prompt with cfg above 1: the graph does what the family's pipeline does with negative_prompt=None
(an encoded empty prompt for SD1.x and SD3, zeros for SDXL with force_zeros_for_empty_prompt, no guidance for
Flux), bit-exact against the pipeline."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import Graph, bchw, load_pipeline

PROMPT, SEED = "a photo of a cat", 4


def ours_without_negative(nodes, graph, cfg):
    guider = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), cfg=cfg)[0]
    return bchw(graph.decode(graph.denoise(guider, graph.default_scheduler, graph.empty(), seed=SEED)))


def pipeline_without_negative(pipe, cfg):
    return pipe(PROMPT, negative_prompt=None, num_inference_steps=4, width=64, height=64, guidance_scale=cfg,
                generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images


@pytest.mark.parametrize("folder, pipeline, cfg", [
    ("diffusers/tiny-sd15", "StableDiffusionPipeline", 7.5),
    ("diffusers/tiny-sdxl", "StableDiffusionXLPipeline", 5.0),  # zeros: force_zeros_for_empty_prompt
    ("diffusers/tiny-sd3", "StableDiffusion3Pipeline", 4.0),
])
def test_no_negative_prompt_equals_the_pipeline(nodes, models_root, folder, pipeline, cfg):
    ours = ours_without_negative(nodes, Graph(nodes, folder), cfg)
    reference = pipeline_without_negative(load_pipeline(pipeline, os.path.join(models_root["root"], folder)), cfg)
    assert torch.equal(ours, reference)
    graph = Graph(nodes, folder)
    explicit_empty = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), negative=graph.encode(""), cfg=cfg)[0]
    empty = bchw(graph.decode(graph.denoise(explicit_empty, graph.default_scheduler, graph.empty(), seed=SEED)))
    assert torch.equal(ours, empty) != ("sdxl" in folder)  # SDXL's zeros are not an encoded empty prompt


def test_sdxl_without_force_zeros_encodes_an_empty_prompt(nodes, models_root):
    folder = os.path.join(models_root["root"], "diffusers", "tiny-sdxl-no-zeros")
    if not os.path.isdir(folder):
        shutil.copytree(models_root["sdxl_folder"], folder)
        with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
            index = json.load(f)
        index["force_zeros_for_empty_prompt"] = False
        with open(os.path.join(folder, "model_index.json"), "w", encoding="utf-8") as f:
            json.dump(index, f)
    ours = ours_without_negative(nodes, Graph(nodes, "diffusers/tiny-sdxl-no-zeros"), 5.0)
    pipe = load_pipeline("StableDiffusionXLPipeline", folder)
    assert pipe.config.force_zeros_for_empty_prompt is False
    assert torch.equal(ours, pipeline_without_negative(pipe, 5.0))


def test_flux_without_negative_runs_no_true_cfg(nodes, models_root):
    graph = Graph(nodes, "diffusers/tiny-flux")
    ours = ours_without_negative(nodes, graph, 4.0)
    pipe = load_pipeline("FluxPipeline", models_root["flux_folder"])
    reference = pipe(PROMPT, negative_prompt=None, true_cfg_scale=4.0, num_inference_steps=4, width=64, height=64,
                     guidance_scale=3.5, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(ours, reference)
    assert torch.equal(ours, ours_without_negative(nodes, graph, 1.0))
