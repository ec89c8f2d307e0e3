"""diffusers' guiders as nodes (CFG-Zero*, APG, TCFG), against the code that runs them in diffusers: the SDXL and
SD3 modular pipelines (StableDiffusionXL/3ModularPipeline) with that guider as their ``guider`` component. The
modular loop runs the positive and negative predictions as two calls, positive first; the guidance object does
the same for these methods (plain CFG stays batched, as the classic pipelines run it)."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from conftest import Graph, bchw

PROMPT, NEGATIVE, SEED, STEPS = "a photo of a cat", "blurry", 4, 5


@pytest.fixture(scope="module")
def modular(models_root):
    """The SDXL or SD3 modular pipeline on the tiny folder (loaded once per module)."""
    from diffusers import ModularPipeline

    loaded = {}

    def pipeline(folder: str):
        if folder not in loaded:
            logging.disable(logging.ERROR)  # the modular loader logs tracebacks for a folder's null components
            try:
                pipe = ModularPipeline.from_pretrained(os.path.join(models_root["root"], folder), local_files_only=True)
                pipe.load_components(dtype=torch.float32)
            finally:
                logging.disable(logging.NOTSET)
            loaded[folder] = pipe
        return loaded[folder]

    return pipeline


FOLDERS = ["diffusers/tiny-sdxl", "diffusers/tiny-sd3"]  # StableDiffusionXL/3ModularPipeline


def reference(pipe, guider):
    pipe.update_components(guider=guider)
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, width=64, height=64,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", output="images")


def ours(nodes, node_id, folder="diffusers/tiny-sdxl", **settings):
    graph = Graph(nodes, folder)
    guider = nodes[node_id].execute(positive=graph.encode(PROMPT), negative=graph.encode(NEGATIVE), **settings)[0]
    latent = graph.denoise(guider, graph.default_scheduler, graph.empty(), seed=SEED, steps=STEPS)
    return bchw(graph.decode(latent))


@pytest.mark.parametrize("settings, options", [
    ({"cfg": 5.0}, {"zero_init_steps": 1}),
    ({"cfg": 7.0, "zero_init_steps": 0, "guidance_rescale": 0.5, "end_percent": 0.6},
     {"zero_init_steps": 0, "guidance_rescale": 0.5, "stop": 0.6}),
])
@pytest.mark.parametrize("folder", FOLDERS)
def test_cfg_zero_star_equals_the_modular_pipeline(nodes, modular, folder, settings, options):
    from diffusers.guiders import ClassifierFreeZeroStarGuidance

    expected = reference(modular(folder), ClassifierFreeZeroStarGuidance(guidance_scale=settings["cfg"], **options))
    assert torch.equal(ours(nodes, "DS_CFGZeroStarGuider", folder, **settings), expected)


@pytest.mark.parametrize("settings, options", [
    ({"cfg": 6.0}, {}),
    ({"cfg": 9.0, "eta": 0.0, "norm_threshold": 2.5, "momentum": -0.5, "start_percent": 0.2},
     {"eta": 0.0, "adaptive_projected_guidance_rescale": 2.5, "adaptive_projected_guidance_momentum": -0.5,
      "start": 0.2}),
])
@pytest.mark.parametrize("folder", FOLDERS)
def test_apg_equals_the_modular_pipeline(nodes, modular, folder, settings, options):
    from diffusers.guiders import AdaptiveProjectedGuidance

    expected = reference(modular(folder), AdaptiveProjectedGuidance(guidance_scale=settings["cfg"], **options))
    assert torch.equal(ours(nodes, "DS_APGGuider", folder, **settings), expected)


@pytest.mark.parametrize("settings", [{"cfg": 5.0}, {"cfg": 8.0, "start_percent": 0.4, "guidance_rescale": 0.3}])
@pytest.mark.parametrize("folder", FOLDERS)
def test_tcfg_equals_the_modular_pipeline(nodes, modular, folder, settings):
    from diffusers.guiders import TangentialClassifierFreeGuidance

    options = {"start": settings.get("start_percent", 0.0), "guidance_rescale": settings.get("guidance_rescale", 0.0)}
    expected = reference(modular(folder), TangentialClassifierFreeGuidance(guidance_scale=settings["cfg"], **options))
    assert torch.equal(ours(nodes, "DS_TCFGGuider", folder, **settings), expected)


def test_the_guiders_change_the_image_and_cfg_stays_batched(nodes):
    plain = ours(nodes, "DS_CFGGuider", cfg=5.0)
    zero_star = ours(nodes, "DS_CFGZeroStarGuider", cfg=5.0)
    apg = ours(nodes, "DS_APGGuider", cfg=5.0, eta=0.0)
    assert not torch.equal(plain, zero_star) and not torch.equal(plain, apg)


@pytest.mark.parametrize("folder", ["diffusers/tiny-sd15", "diffusers/tiny-flux"])
def test_the_guiders_run_on_the_families_without_a_modular_pipeline(nodes, folder):
    """SD1.x (no modular blocks in diffusers) and Flux true CFG: the same guider objects on the same two calls."""
    for node in ("DS_CFGZeroStarGuider", "DS_APGGuider", "DS_TCFGGuider"):
        image = ours(nodes, node, folder, cfg=4.0)
        assert torch.isfinite(image).all() and image.std() > 0


@pytest.mark.parametrize("settings", [
    {"cfg": 5.0, "pag_scale": 3.0},
    {"cfg": 6.0, "pag_scale": 2.0, "pag_layers": "mid, up.0", "pag_end_percent": 0.6},
])
def test_pag_equals_the_modular_pipeline(nodes, modular, settings):
    from diffusers.guiders import PerturbedAttentionGuidance
    from diffusers.hooks import LayerSkipConfig

    pipe = modular("diffusers/tiny-sdxl")
    configs = []
    for name in settings.get("pag_layers", "mid").split(", "):  # every transformer block of those attentions
        block = pipe.unet.mid_block if name == "mid" else pipe.unet.up_blocks[int(name.split(".")[1])]
        prefix = "mid_block" if name == "mid" else f"up_blocks.{name.split('.')[1]}"
        configs += [LayerSkipConfig(indices=list(range(len(a.transformer_blocks))), fqn=f"{prefix}.attentions.{i}"
                                    ".transformer_blocks", skip_attention=False, skip_attention_scores=True,
                                    skip_ff=False) for i, a in enumerate(block.attentions)]
    guider = PerturbedAttentionGuidance(guidance_scale=settings["cfg"], perturbed_guidance_scale=settings["pag_scale"],
                                        perturbed_guidance_start=0.0,
                                        perturbed_guidance_stop=settings.get("pag_end_percent", 1.0),
                                        perturbed_guidance_config=configs)
    expected = reference(pipe, guider)
    ours_image = ours(nodes, "DS_PAGGuider", **settings)
    assert torch.equal(ours_image, expected)
    assert not torch.equal(ours_image, ours(nodes, "DS_CFGGuider", cfg=settings["cfg"]))


def test_pag_on_a_denoiser_it_cannot_perturb_is_refused(nodes):
    from diffusers_stages.engine.errors import StageError

    for folder in ("diffusers/tiny-sd3", "diffusers/tiny-flux"):
        with pytest.raises(StageError, match="guider: perturbed-attention guidance cannot perturb .*Fix: use PAG with"):
            ours(nodes, "DS_PAGGuider", folder, cfg=4.0)
    with pytest.raises(StageError, match="layers: .down.0. names no attention block"):
        ours(nodes, "DS_PAGGuider", cfg=4.0, pag_layers="down.0")


@pytest.mark.parametrize("settings", [{"cfg": 5.0, "seg_scale": 3.0},
                                      {"cfg": 6.0, "seg_scale": 2.0, "seg_blur_sigma": 2.0, "seg_layers": "up.0"}])
def test_seg_equals_the_modular_pipeline(nodes, modular, settings):
    from diffusers.guiders import SmoothedEnergyGuidance
    from diffusers.hooks.smoothed_energy_guidance_utils import SmoothedEnergyGuidanceConfig

    pipe = modular("diffusers/tiny-sdxl")
    name = settings.get("seg_layers", "mid")
    block = pipe.unet.mid_block if name == "mid" else pipe.unet.up_blocks[int(name.split(".")[1])]
    prefix = "mid_block" if name == "mid" else f"up_blocks.{name.split('.')[1]}"
    configs = [SmoothedEnergyGuidanceConfig(indices=list(range(len(a.transformer_blocks))),
                                            fqn=f"{prefix}.attentions.{i}.transformer_blocks")
               for i, a in enumerate(block.attentions)]
    guider = SmoothedEnergyGuidance(guidance_scale=settings["cfg"], seg_guidance_scale=settings["seg_scale"],
                                    seg_blur_sigma=settings.get("seg_blur_sigma", 9999999.0), seg_guidance_start=0.0,
                                    seg_guidance_stop=1.0, seg_guidance_config=configs)
    expected = reference(pipe, guider)
    assert torch.equal(ours(nodes, "DS_SEGGuider", **settings), expected)


def test_pag_without_cfg_is_refused_not_ignored(nodes):
    """diffusers' PAG/SEG guiders perturb nothing when CFG is off (their hooks apply to a CFG step's third call
    only): cfg 1 is refused rather than silently sampling without PAG."""
    from diffusers_stages.engine.errors import StageError

    graph = Graph(nodes, "diffusers/tiny-sdxl")
    for node in ("DS_PAGGuider", "DS_SEGGuider"):
        guider = nodes[node].execute(positive=graph.encode(PROMPT), cfg=1.0)[0]
        with pytest.raises(StageError, match="guider: .* perturbs the attention only while CFG runs"):
            graph.denoise(guider, graph.default_scheduler, graph.empty())
