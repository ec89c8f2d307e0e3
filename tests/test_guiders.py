"""The guider nodes against the code that runs them in diffusers. CFG-Zero*, APG, TCFG, FDG, SEG: the SDXL, SD3 and
Z-Image modular pipelines (StableDiffusionXL/3ModularPipeline, ZImageModularPipeline) with that guider as their
``guider`` component; the modular
loop runs the positive and negative predictions as two calls, positive first, and the guidance object does the
same for these methods (plain CFG stays batched, as the classic pipelines run it). PAG: the PAG pipelines
(StableDiffusion(XL/3)PAGPipeline), which batch [negative, positive, perturbed] in one call."""

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


# StableDiffusionXLModularPipeline, StableDiffusion3ModularPipeline, ZImageModularPipeline
FOLDERS = ["diffusers/tiny-sdxl", "diffusers/tiny-sd3", "diffusers/tiny-z-image"]


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


@pytest.mark.parametrize("settings", [{"cfg": 5.0, "cfg_high": 10.0},
                                      {"cfg": 3.0, "cfg_high": 8.0, "parallel_weight": 0.5, "guidance_rescale": 0.3,
                                       "end_percent": 0.8}])
@pytest.mark.parametrize("folder", FOLDERS)
def test_fdg_equals_the_modular_pipeline(nodes, modular, folder, settings):
    from diffusers.guiders import FrequencyDecoupledGuidance

    options = {"guidance_scales": [settings["cfg_high"], settings["cfg"]],
               "parallel_weights": settings.get("parallel_weight"),
               "guidance_rescale": settings.get("guidance_rescale", 0.0), "stop": settings.get("end_percent", 1.0)}
    expected = reference(modular(folder), FrequencyDecoupledGuidance(**options))
    image = ours(nodes, "DS_FDGGuider", folder, **settings)
    assert torch.equal(image, expected)
    assert not torch.equal(image, ours(nodes, "DS_CFGGuider", folder, cfg=settings["cfg"]))


def test_fdg_needs_spatial_predictions(nodes):
    from diffusers_stages.engine.errors import StageError

    with pytest.raises(StageError, match="guider: FDG splits the prediction by frequency .*Fix: use another guider"):
        ours(nodes, "DS_FDGGuider", "diffusers/tiny-flux", cfg=4.0)


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


PAG_PIPELINES = {"diffusers/tiny-sd15": "StableDiffusionPAGPipeline",
                 "diffusers/tiny-sdxl": "StableDiffusionXLPAGPipeline",
                 "diffusers/tiny-sd3": "StableDiffusion3PAGPipeline"}


@pytest.fixture(scope="module")
def pag_pipeline(models_root):
    from conftest import load_pipeline

    loaded = {}

    def pipeline(folder: str, layers: list[str]):
        key = (folder, tuple(layers))
        if key not in loaded:
            loaded[key] = load_pipeline(PAG_PIPELINES[folder], os.path.join(models_root["root"], folder),
                                        pag_applied_layers=layers)
        return loaded[key]

    return pipeline


@pytest.mark.parametrize("folder, settings", [
    ("diffusers/tiny-sd15", {"cfg": 5.0, "pag_scale": 3.0}),
    ("diffusers/tiny-sd15", {"cfg": 1.0, "pag_scale": 2.0, "pag_layers": "mid, up_blocks.1"}),  # PAG alone
    ("diffusers/tiny-sd15", {"cfg": 6.0, "pag_scale": 4.0, "pag_adaptive_scale": 0.005, "guidance_rescale": 0.4,
                             "batch": 2}),
    ("diffusers/tiny-sdxl", {"cfg": 5.0, "pag_scale": 3.0}),
    ("diffusers/tiny-sdxl", {"cfg": 6.0, "pag_scale": 2.0, "pag_layers": "mid, up_blocks.0"}),
    ("diffusers/tiny-sd3", {"cfg": 5.0, "pag_scale": 3.0, "pag_layers": "blocks.1"}),
    ("diffusers/tiny-sd3", {"cfg": 1.0, "pag_scale": 2.5, "pag_layers": "blocks.2, blocks.1"}),
])
def test_pag_equals_the_pag_pipelines(nodes, pag_pipeline, folder, settings):
    """StableDiffusion(XL/3)PAGPipeline: [negative, positive, perturbed] in one call with their PAG processors."""
    settings = dict(settings)
    batch = settings.pop("batch", 1)
    layers = settings.get("pag_layers", "mid").split(", ")
    pipe = pag_pipeline(folder, layers)
    extra = {"guidance_rescale": settings["guidance_rescale"]} if "guidance_rescale" in settings else {}
    expected = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, width=64, height=64,
                    guidance_scale=settings["cfg"], pag_scale=settings["pag_scale"],
                    pag_adaptive_scale=settings.get("pag_adaptive_scale", 0.0), num_images_per_prompt=batch,
                    generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", **extra).images
    graph = Graph(nodes, folder)
    guider = nodes["DS_PAGGuider"].execute(positive=graph.encode(PROMPT), negative=graph.encode(NEGATIVE),
                                           **settings)[0]
    image = bchw(graph.decode(graph.denoise(guider, graph.default_scheduler, graph.empty(batch=batch), seed=SEED,
                                            steps=STEPS)))
    assert torch.equal(image, expected)
    plain = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), negative=graph.encode(NEGATIVE),
                                          cfg=settings["cfg"])[0]
    assert not torch.equal(image, bchw(graph.decode(graph.denoise(plain, graph.default_scheduler,
                                                                  graph.empty(batch=batch), seed=SEED, steps=STEPS))))


def test_pag_window_leaves_plain_cfg_outside_it(nodes):
    graph = Graph(nodes, "diffusers/tiny-sd15")
    run = {}
    for name, node, settings in [("cfg", "DS_CFGGuider", {}), ("pag", "DS_PAGGuider", {"pag_scale": 3.0}),
                                 ("closed", "DS_PAGGuider", {"pag_scale": 3.0, "pag_start_percent": 1.0}),
                                 ("zero", "DS_PAGGuider", {"pag_scale": 0.0})]:
        guider = nodes[node].execute(positive=graph.encode(PROMPT), negative=graph.encode(NEGATIVE), cfg=5.0,
                                     **settings)[0]
        run[name] = graph.denoise(guider, graph.default_scheduler, graph.empty(), seed=SEED, steps=STEPS)["samples"]
    assert torch.equal(run["cfg"], run["zero"]) and not torch.equal(run["cfg"], run["pag"])
    assert not torch.equal(run["pag"], run["closed"])


def test_pag_layer_names(nodes):
    """up.N / down.N are short for up_blocks.N / down_blocks.N; on SD3.5's dual-attention blocks only the joint
    attention is perturbed (StableDiffusion3PAGPipeline fails on the extra self-attention)."""
    short = ours(nodes, "DS_PAGGuider", "diffusers/tiny-sd15", cfg=4.0, pag_layers="up.1")
    assert torch.equal(short, ours(nodes, "DS_PAGGuider", "diffusers/tiny-sd15", cfg=4.0, pag_layers="up_blocks.1"))
    dual = ours(nodes, "DS_PAGGuider", "diffusers/tiny-sd3", cfg=4.0, pag_layers="blocks.0")
    assert torch.isfinite(dual).all()
    assert not torch.equal(dual, ours(nodes, "DS_CFGGuider", "diffusers/tiny-sd3", cfg=4.0))


def test_pag_on_a_denoiser_it_cannot_perturb_is_refused(nodes):
    from diffusers_stages.engine.errors import StageError

    with pytest.raises(StageError, match="guider: perturbed-attention guidance has no diffusers pipeline for Flux.*"
                                         "Fix: use PAG with an SD1.x/2.x, SDXL or SD3 model"):
        ours(nodes, "DS_PAGGuider", "diffusers/tiny-flux", cfg=4.0)
    with pytest.raises(StageError, match="layers: .down.0. names no self-attention layer"):
        ours(nodes, "DS_PAGGuider", cfg=4.0, pag_layers="down.0")
    with pytest.raises(StageError, match=r"layers: .up.\[. is not a valid layer pattern"):
        ours(nodes, "DS_PAGGuider", cfg=4.0, pag_layers="up.[")
    for folder in ("diffusers/tiny-sd3", "diffusers/tiny-flux"):
        with pytest.raises(StageError, match="guider: SmoothedEnergyGuidance cannot perturb .*Fix: use it with an SD1"):
            ours(nodes, "DS_SEGGuider", folder, cfg=4.0)


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


def test_seg_without_cfg_is_refused_not_ignored(nodes):
    """diffusers' SEG guider perturbs nothing when CFG is off (its hooks apply to a CFG step's third call only):
    cfg 1 is refused rather than silently sampling without SEG."""
    from diffusers_stages.engine.errors import StageError

    graph = Graph(nodes, "diffusers/tiny-sdxl")
    for node in ("DS_SEGGuider",):
        guider = nodes[node].execute(positive=graph.encode(PROMPT), cfg=1.0)[0]
        with pytest.raises(StageError, match="guider: .* perturbs the denoiser only while CFG runs"):
            graph.denoise(guider, graph.default_scheduler, graph.empty())


def guided_by(pipe, guider, blocks) -> list[bool]:
    """Replace each step's prediction of a true-CFG pipeline (positive call, then negative) by what diffusers'
    ``guider`` makes of the same calls: the guider picks the calls (the skip-layer one with ``blocks`` replaced by
    functions returning their (encoder, hidden) inputs, as Flux's and Qwen-Image's blocks return them; one joined
    stream for Flux.2's single blocks) and combines
    them. Returns, per step, whether a skip-layer call ran."""
    transformer, step = pipe.transformer, pipe.scheduler.step
    forward, seen, skipped = transformer.forward, [], []

    def inputs_returned(hidden_states, encoder_hidden_states=None, *args, **kwargs):
        # Flux.2's single blocks take the joined streams alone (encoder_hidden_states None) and return it
        return hidden_states if encoder_hidden_states is None else (encoder_hidden_states, hidden_states)

    def recording_forward(**kwargs):
        seen.append(kwargs)
        return forward(**kwargs)

    def guided_step(noise_pred, t, latents, **kwargs):
        positive, negative = seen[-2:]  # the pipeline's two true-CFG calls of this step
        guider.set_state(len(skipped), STEPS, t)
        predictions = {}
        for batch in guider.prepare_inputs({"prompt": ("positive", "negative")}):
            name = getattr(batch, guider._identifier_key)
            for block in blocks if name == "pred_cond_skip" else ():
                block.forward = inputs_returned
            predictions[name] = forward(**(positive if batch.prompt == "positive" else negative))[0]
            for block in blocks if name == "pred_cond_skip" else ():
                del block.forward
        skipped.append("pred_cond_skip" in predictions)
        return step(guider.forward(**predictions).pred, t, latents, **kwargs)

    transformer.forward, pipe.scheduler.step = recording_forward, guided_step
    return skipped


@pytest.mark.parametrize("layers, configs, window", [
    ("0", {"transformer_blocks": [0]}, (0.0, 1.0)),
    ("0, single.1", {"transformer_blocks": [0], "single_transformer_blocks": [1]}, (0.2, 0.8)),
])
def test_skip_layer_guidance_on_flux_equals_diffusers_guider_in_flux_pipeline(nodes, models_root, layers, configs,
                                                                              window):
    """No diffusers pipeline runs a guider on Flux (FluxModularPipeline's loop has none). Reference: FluxPipeline
    with true CFG, its every step's prediction replaced by what diffusers' SkipLayerGuidance object makes of the
    same calls: the guider picks the calls (positive, negative, then the positive with the blocks skipped) and
    combines them; prompts, noise, timesteps, scheduler and decoding stay the pipeline's. The skipped blocks are
    replaced here by functions returning their (encoder, hidden) inputs, because diffusers 0.42's skip hook swaps
    Flux's streams (pinned below)."""
    from conftest import load_pipeline
    from diffusers.guiders import SkipLayerGuidance
    from diffusers.hooks import LayerSkipConfig

    pipe = load_pipeline("FluxPipeline", models_root["flux_folder"])
    guider = SkipLayerGuidance(guidance_scale=4.0, skip_layer_guidance_scale=2.0, skip_layer_guidance_start=window[0],
                               skip_layer_guidance_stop=window[1],
                               skip_layer_config=[LayerSkipConfig(indices=i, fqn=f) for f, i in configs.items()])
    skipped = guided_by(pipe, guider, [pipe.transformer.get_submodule(f"{f}.{i}") for f, indices in configs.items()
                                       for i in indices])
    expected = pipe(PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=4.0, guidance_scale=3.5,
                    num_inference_steps=STEPS, width=64, height=64, generator=torch.Generator("cpu").manual_seed(SEED),
                    output_type="pt").images
    assert skipped == [window[0] * STEPS // 1 < i < window[1] * STEPS // 1 for i in range(STEPS)] and any(skipped)

    graph = Graph(nodes, "diffusers/tiny-flux")
    positive = nodes["DS_FluxGuidance"].execute(conditioning=graph.encode(PROMPT), guidance=3.5)[0]
    cfg = nodes["DS_CFGGuider"].execute(positive=positive, negative=graph.encode(NEGATIVE), cfg=4.0)[0]
    slg = nodes["DS_SkipLayerGuidance"].execute(guider=cfg, layers=layers, scale=2.0, start_percent=window[0],
                                                end_percent=window[1])[0]
    image = bchw(graph.decode(graph.denoise(slg, graph.default_scheduler, graph.empty(), seed=SEED, steps=STEPS)))
    assert torch.equal(image, expected)
    plain = bchw(graph.decode(graph.denoise(cfg, graph.default_scheduler, graph.empty(), seed=SEED, steps=STEPS)))
    assert not torch.equal(image, plain)


@pytest.mark.parametrize("layers, configs", [("1", {"layers": [1]}), ("0, 1", {"layers": [0, 1]})])
def test_skip_layer_guidance_on_z_image_equals_the_modular_pipeline(nodes, modular, monkeypatch, layers, configs):
    """ZImageModularPipeline runs diffusers' SkipLayerGuidance with its own block-skip hooks. Those look the block's
    image stream up as "hidden_states", which ZImageTransformerBlock calls x (its first argument): told so here,
    diffusers' loop, guider and hooks run unchanged."""
    from diffusers.guiders import SkipLayerGuidance
    from diffusers.hooks import LayerSkipConfig
    from diffusers.hooks._helpers import TransformerBlockRegistry
    from diffusers.models.transformers.transformer_z_image import ZImageTransformerBlock

    monkeypatch.setattr(TransformerBlockRegistry.get(ZImageTransformerBlock), "_cached_parameter_indices",
                        {"hidden_states": 0})

    guider = SkipLayerGuidance(guidance_scale=4.0, skip_layer_guidance_scale=2.0, skip_layer_guidance_start=0.0,
                               skip_layer_guidance_stop=1.0,
                               skip_layer_config=[LayerSkipConfig(indices=i, fqn=f) for f, i in configs.items()])
    expected = reference(modular("diffusers/tiny-z-image"), guider)
    graph = Graph(nodes, "diffusers/tiny-z-image")
    cfg = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), negative=graph.encode(NEGATIVE), cfg=4.0)[0]
    slg = nodes["DS_SkipLayerGuidance"].execute(guider=cfg, layers=layers, scale=2.0, start_percent=0.0,
                                                end_percent=1.0)[0]
    image = bchw(graph.decode(graph.denoise(slg, graph.default_scheduler, graph.empty(), seed=SEED, steps=STEPS)))
    assert torch.equal(image, expected)


def test_diffusers_block_skip_hook_still_swaps_flux_streams(models_root):
    """Why BlockSkip exists: diffusers 0.42's TransformerBlockSkipHook returns (hidden, encoder) for blocks that
    return (encoder, hidden). When this fails, diffusers fixed it and SkipLayerGuidance's own hooks can be used."""
    from conftest import load_pipeline
    from diffusers.hooks import LayerSkipConfig
    from diffusers.hooks.layer_skip import _apply_layer_skip_hook

    transformer = load_pipeline("FluxPipeline", models_root["flux_folder"]).transformer
    _apply_layer_skip_hook(transformer, LayerSkipConfig(indices=[0], fqn="transformer_blocks"), name="probe")
    hidden, encoder = torch.randn(1, 16, 64), torch.randn(1, 7, 64)
    out = transformer.transformer_blocks[0](hidden_states=hidden, encoder_hidden_states=encoder,
                                            temb=torch.zeros(1, 32), image_rotary_emb=None)
    assert out[0] is hidden and out[1] is encoder  # FluxTransformerBlock returns (encoder, hidden)


def test_skip_layer_guidance_on_qwen_image_equals_diffusers_guider_in_its_pipeline(nodes, models_root):
    """As for Flux: QwenImagePipeline with true CFG, each step's prediction replaced by what diffusers'
    SkipLayerGuidance object makes of the same calls (positive, negative, then the positive with block 1 skipped:
    the block replaced by a function returning its (encoder, hidden) inputs)."""
    from conftest import load_pipeline
    from diffusers.guiders import SkipLayerGuidance
    from diffusers.hooks import LayerSkipConfig

    pipe = load_pipeline("QwenImagePipeline", models_root["qwen_image_folder"])
    guider = SkipLayerGuidance(guidance_scale=3.0, skip_layer_guidance_scale=2.0, skip_layer_guidance_start=0.0,
                               skip_layer_guidance_stop=1.0,
                               skip_layer_config=[LayerSkipConfig(indices=[1], fqn="transformer_blocks")])
    skipped = guided_by(pipe, guider, [pipe.transformer.transformer_blocks[1]])
    expected = pipe(PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=3.0, num_inference_steps=STEPS, width=64,
                    height=64, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert any(skipped)
    graph = Graph(nodes, "diffusers/tiny-qwen-image")
    cfg = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), negative=graph.encode(NEGATIVE), cfg=3.0)[0]
    slg = nodes["DS_SkipLayerGuidance"].execute(guider=cfg, layers="1", scale=2.0, start_percent=0.0,
                                                end_percent=1.0)[0]
    image = bchw(graph.decode(graph.denoise(slg, graph.default_scheduler, graph.empty(), seed=SEED, steps=STEPS)))
    assert torch.equal(image, expected)


def test_skip_layer_guidance_refusals(nodes):
    from diffusers_stages.engine.errors import StageError

    graph = Graph(nodes, "diffusers/tiny-flux")
    positive = nodes["DS_FluxGuidance"].execute(conditioning=graph.encode(PROMPT), guidance=3.5)[0]
    distilled = nodes["DS_CFGGuider"].execute(positive=positive, cfg=1.0)[0]  # Flux dev without true CFG
    slg = nodes["DS_SkipLayerGuidance"].execute(guider=distilled, layers="0", scale=2.0)[0]
    with pytest.raises(StageError, match="guider: Skip-layer guidance .* only while CFG runs.*Fix: connect a negative"):
        graph.denoise(slg, graph.default_scheduler, graph.empty())
    cfg = nodes["DS_CFGGuider"].execute(positive=positive, negative=graph.encode(NEGATIVE), cfg=4.0)[0]
    for layers in ("1", "single.2", "double.0", "x"):
        slg = nodes["DS_SkipLayerGuidance"].execute(guider=cfg, layers=layers, scale=2.0)[0]
        with pytest.raises(StageError, match=f"layers: '{layers}' is not a transformer block .*Fix: use block numbers "
                                             "it has: 0, single.0-1"):
            graph.denoise(slg, graph.default_scheduler, graph.empty())
    apg = nodes["DS_APGGuider"].execute(positive=positive, negative=graph.encode(NEGATIVE), cfg=4.0)[0]
    with pytest.raises(StageError, match="guider: skip-layer guidance adds to plain CFG"):
        nodes["DS_SkipLayerGuidance"].execute(guider=apg, layers="1", scale=2.0)
    sd1 = Graph(nodes, "diffusers/tiny-sd15")
    with pytest.raises(StageError, match="guider: skip-layer guidance skips a DiT's transformer blocks; a Stable Diff"):
        nodes["DS_SkipLayerGuidance"].execute(guider=sd1.guider(PROMPT, NEGATIVE), layers="1", scale=2.0)
