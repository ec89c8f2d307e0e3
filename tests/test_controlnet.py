"""ControlNet: our graph against StableDiffusionControlNetPipeline (one and two ControlNets, scales, guidance
windows) and StableDiffusionXLControlNetPipeline, torch.equal; wrong family and odd sizes."""

from __future__ import annotations

import pytest
import torch
from conftest import Graph, bchw, load_pipeline

from diffusers_stages.engine.errors import StageError

PROMPT, NEGATIVE, SEED = "a photo of a cat", "blurry", 9


def control_image(height=64, width=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, height, width, 3, generator=generator)  # IMAGE layout, 0..1


def controlled_guider(graph, controls, cfg=7.5):
    """controls: (controlnet, image, strength, start, end) in chain order, each on both prompts."""
    positive, negative = graph.encode(PROMPT), graph.encode(NEGATIVE)
    for controlnet, image, strength, start, end in controls:
        positive, negative = graph.nodes["DS_ApplyControlNet"].execute(
            positive=positive, negative=negative, controlnet=controlnet, image=image, strength=strength,
            start_percent=start, end_percent=end)
    return graph.nodes["DS_CFGGuider"].execute(positive=positive, negative=negative, cfg=cfg)[0]


def run_graph(graph, guider, width=64, height=64, batch=1, steps=4):
    latent = graph.denoise(guider, graph.default_scheduler, graph.empty(width, height, batch), seed=SEED,
                           steps=steps)
    return bchw(graph.decode(latent))


@pytest.fixture(scope="module")
def controlnets(nodes):
    load = nodes["DS_LoadControlNet"]
    return {name: load.execute(controlnet_name=f"tiny-{name}", dtype="fp32")[0]
            for name in ("sd1-controlnet", "sd1-controlnet-2", "sdxl-controlnet")}


def pipeline_with(class_name, folder, modules, scheduler_from):
    pipe = load_pipeline(class_name, folder, controlnet=modules if len(modules) > 1 else modules[0])
    pipe.scheduler = scheduler_from.shipped_scheduler  # other modules swap the shared pipeline's scheduler
    return pipe


def call_pipe(pipe, images, scales, starts, ends, width=64, height=64, batch=1, steps=4, **kwargs):
    single = len(images) == 1
    return pipe(PROMPT, negative_prompt=NEGATIVE, image=images[0] if single else images, num_inference_steps=steps,
                width=width, height=height, num_images_per_prompt=batch,
                controlnet_conditioning_scale=scales[0] if single else scales,
                control_guidance_start=starts[0] if single else starts,
                control_guidance_end=ends[0] if single else ends,
                generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", **kwargs).images


@pytest.mark.parametrize("strength, start, end, batch", [(1.0, 0.0, 1.0, 1), (0.5, 0.25, 0.75, 2)])
def test_one_controlnet_matches_the_sd15_pipeline(sd1_graph, sd1_pipe, controlnets, models_root, strength, start,
                                                  end, batch):
    net = controlnets["sd1-controlnet"]
    image = control_image()
    ours = run_graph(sd1_graph, controlled_guider(sd1_graph, [(net, image, strength, start, end)]), batch=batch)
    pipe = pipeline_with("StableDiffusionControlNetPipeline", models_root["sd1_folder"], [net.module], sd1_pipe)
    ref = call_pipe(pipe, [bchw(image).contiguous()], [strength], [start], [end], batch=batch)
    assert torch.equal(ours, ref)
    plain = run_graph(sd1_graph, controlled_guider(sd1_graph, []), batch=batch)
    assert not torch.equal(ours, plain)  # the control did something


def test_two_controlnets_match_the_pipeline_with_multi_controlnet(sd1_graph, sd1_pipe, controlnets, models_root):
    nets = [controlnets["sd1-controlnet"], controlnets["sd1-controlnet-2"]]
    images = [control_image(seed=1), control_image(seed=2)]
    controls = [(nets[0], images[0], 0.8, 0.0, 0.5), (nets[1], images[1], 1.2, 0.25, 1.0)]
    ours = run_graph(sd1_graph, controlled_guider(sd1_graph, controls))
    pipe = pipeline_with("StableDiffusionControlNetPipeline", models_root["sd1_folder"], [n.module for n in nets],
                         sd1_pipe)
    ref = call_pipe(pipe, [bchw(i).contiguous() for i in images], [0.8, 1.2], [0.0, 0.25], [0.5, 1.0])
    assert torch.equal(ours, ref)


def test_control_image_of_another_size_is_resized_as_the_pipeline_does(sd1_graph, sd1_pipe, controlnets, models_root):
    net = controlnets["sd1-controlnet"]
    image = control_image(40, 56, seed=3)
    ours = run_graph(sd1_graph, controlled_guider(sd1_graph, [(net, image, 1.0, 0.0, 1.0)]), width=96)
    pipe = pipeline_with("StableDiffusionControlNetPipeline", models_root["sd1_folder"], [net.module], sd1_pipe)
    assert torch.equal(ours, call_pipe(pipe, [bchw(image).contiguous()], [1.0], [0.0], [1.0], width=96))


def test_sdxl_controlnet_matches_the_pipeline(nodes, controlnets, models_root):
    graph = Graph(nodes, "diffusers/tiny-sdxl")
    net = controlnets["sdxl-controlnet"]
    image = control_image(seed=4)
    ours = run_graph(graph, controlled_guider(graph, [(net, image, 0.8, 0.0, 1.0)], cfg=5.0))
    reference_pipe = load_pipeline("StableDiffusionXLPipeline", models_root["sdxl_folder"])
    pipe = pipeline_with("StableDiffusionXLControlNetPipeline", models_root["sdxl_folder"], [net.module],
                         reference_pipe)
    ref = call_pipe(pipe, [bchw(image).contiguous()], [0.8], [0.0], [1.0], guidance_scale=5.0)
    assert torch.equal(ours, ref)


def test_strength_zero_is_the_plain_graph_and_positive_only_differs(sd1_graph, controlnets):
    net = controlnets["sd1-controlnet"]
    plain = run_graph(sd1_graph, controlled_guider(sd1_graph, []))
    assert torch.equal(run_graph(sd1_graph, controlled_guider(sd1_graph, [(net, control_image(), 0.0, 0, 1)])), plain)
    positive, _ = sd1_graph.nodes["DS_ApplyControlNet"].execute(
        positive=sd1_graph.encode(PROMPT), controlnet=net, image=control_image(), strength=1.0, start_percent=0.0,
        end_percent=1.0)
    guider = sd1_graph.nodes["DS_CFGGuider"].execute(positive=positive, negative=sd1_graph.encode(NEGATIVE),
                                                     cfg=7.5)[0]
    both = run_graph(sd1_graph, controlled_guider(sd1_graph, [(net, control_image(), 1.0, 0, 1)]))
    only_positive = run_graph(sd1_graph, guider)
    assert not torch.equal(only_positive, both) and not torch.equal(only_positive, plain)


def test_controlnet_of_another_family_is_refused(nodes, controlnets):
    graph = Graph(nodes, "diffusers/tiny-sdxl")
    guider = controlled_guider(graph, [(controlnets["sd1-controlnet"], control_image(), 1.0, 0.0, 1.0)])
    with pytest.raises(StageError, match="ControlNet 'tiny-sd1-controlnet' is for Stable Diffusion 1.x/2.x.*"
                                         "denoiser is Stable Diffusion XL"):
        run_graph(graph, guider)


def test_controlnet_input_mistakes_are_named(nodes, sd1_graph, controlnets):
    apply = nodes["DS_ApplyControlNet"]
    assert "start_percent" in apply.VALIDATE_INPUTS(start_percent=0.8, end_percent=0.2)
    assert "controlnet_name" in nodes["DS_LoadControlNet"].VALIDATE_INPUTS(controlnet_name="missing")
    two = torch.cat([control_image(), control_image(seed=1), control_image(seed=2)])
    guider = controlled_guider(sd1_graph, [(controlnets["sd1-controlnet"], two, 1.0, 0.0, 1.0)])
    with pytest.raises(StageError, match="control image batch has 3 images but the latent has 2"):
        run_graph(sd1_graph, guider, batch=2)


def test_sdxl_union_controlnet_matches_the_union_pipeline(nodes, models_root):
    graph = Graph(nodes, "diffusers/tiny-sdxl")
    union = nodes["DS_LoadControlNet"].execute(controlnet_name="tiny-sdxl-union-controlnet", dtype="fp32")[0]
    image = control_image(seed=5)
    positive, negative = nodes["DS_ApplyControlNet"].execute(
        positive=graph.encode(PROMPT), negative=graph.encode(NEGATIVE), controlnet=union, image=image, strength=0.9,
        union_mode=3)
    ours = run_graph(graph, nodes["DS_CFGGuider"].execute(positive=positive, negative=negative, cfg=5.0)[0])
    pipe = load_pipeline("StableDiffusionXLControlNetUnionPipeline", models_root["sdxl_folder"],
                         controlnet=union.module)
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, control_image=[bchw(image).contiguous()], control_mode=[3],
               controlnet_conditioning_scale=0.9, num_inference_steps=4, width=64, height=64, guidance_scale=5.0,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(ours, ref)
    missing_mode = nodes["DS_ApplyControlNet"].execute(positive=graph.encode(PROMPT), controlnet=union, image=image)[0]
    guider = nodes["DS_CFGGuider"].execute(positive=missing_mode, cfg=1.0)[0]
    with pytest.raises(StageError, match="union_mode: .* is a union ControlNet"):
        run_graph(graph, guider)


def test_sd3_controlnet_matches_the_pipeline(nodes, models_root, monkeypatch):
    """StableDiffusion3ControlNetPipeline samples the control image's VAE posterior from torch's global generator
    (no seed reaches it); we take the posterior's mode, so the reference is run with the mode too."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    graph = Graph(nodes, "diffusers/tiny-sd3")
    net = nodes["DS_LoadControlNet"].execute(controlnet_name="tiny-sd3-controlnet", dtype="fp32")[0]
    image = control_image(seed=6)
    positive, negative = nodes["DS_ApplyControlNet"].execute(
        positive=graph.encode(PROMPT), negative=graph.encode(NEGATIVE), controlnet=net, image=image, strength=0.7,
        start_percent=0.0, end_percent=0.75, vae=graph.vae)
    ours = run_graph(graph, nodes["DS_CFGGuider"].execute(positive=positive, negative=negative, cfg=4.0)[0])
    pipe = load_pipeline("StableDiffusion3ControlNetPipeline", models_root["sd3_folder"], controlnet=net.module)
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, control_image=bchw(image).contiguous() * 2 - 1,
               controlnet_conditioning_scale=0.7, control_guidance_end=0.75, num_inference_steps=4, width=64,
               height=64, guidance_scale=4.0, generator=torch.Generator("cpu").manual_seed(SEED),
               output_type="pt").images
    assert torch.equal(ours, ref)
    without_vae = nodes["DS_ApplyControlNet"].execute(positive=graph.encode(PROMPT), controlnet=net, image=image)[0]
    with pytest.raises(StageError, match="vae: .* takes the control image as latents"):
        run_graph(graph, nodes["DS_CFGGuider"].execute(positive=without_vae, cfg=1.0)[0])


@pytest.mark.parametrize("true_cfg", [1.0, 3.0])
def test_flux_controlnet_matches_the_pipeline(nodes, models_root, true_cfg):
    graph = Graph(nodes, "diffusers/tiny-flux")
    net = nodes["DS_LoadControlNet"].execute(controlnet_name="tiny-flux-controlnet", dtype="fp32")[0]
    image = control_image(seed=7)
    positive = nodes["DS_FluxGuidance"].execute(conditioning=graph.encode(PROMPT), guidance=3.5)[0]
    negative = graph.encode(NEGATIVE) if true_cfg > 1 else None
    positive, negative = nodes["DS_ApplyControlNet"].execute(
        positive=positive, negative=negative, controlnet=net, image=image, strength=0.8, vae=graph.vae)
    guider = nodes["DS_CFGGuider"].execute(positive=positive, cfg=true_cfg,
                                           **({"negative": negative} if negative is not None else {}))[0]
    ours = run_graph(graph, guider)
    pipe = load_pipeline("FluxControlNetPipeline", models_root["flux_folder"], controlnet=net.module)
    extra = {"negative_prompt": NEGATIVE, "true_cfg_scale": true_cfg} if true_cfg > 1 else {}
    ref = pipe(PROMPT, control_image=bchw(image).contiguous() * 2 - 1, controlnet_conditioning_scale=0.8,
               num_inference_steps=4, width=64, height=64, guidance_scale=3.5,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", **extra).images
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("family, folder, name", [
    ("sd1", "diffusers/tiny-sd15", "tiny-sd1-controlnet.safetensors"),
    ("sd1", "diffusers/tiny-sd15", "tiny-sd1-controlnet-diffusers-layout.safetensors"),
    ("sdxl", "diffusers/tiny-sdxl", "tiny-sdxl-controlnet.safetensors"),
    ("sdxl", "diffusers/tiny-sdxl", "tiny-sdxl-controlnet-diffusers-layout.safetensors"),
])
def test_single_file_controlnet_equals_its_folder(nodes, controlnets, family, folder, name):
    """Single files in the original layout (control_model.*, input_hint_block, zero_convs) and in the diffusers layout
    give the folder's image."""
    graph = Graph(nodes, folder)
    single = nodes["DS_LoadControlNet"].execute(controlnet_name=name, dtype="fp32")[0]
    assert name in nodes["DS_LoadControlNet"].INPUT_TYPES()["required"]["controlnet_name"][0]
    image = control_image(seed=8)
    from_file = run_graph(graph, controlled_guider(graph, [(single, image, 0.9, 0.0, 1.0)]))
    from_folder = run_graph(graph, controlled_guider(graph, [(controlnets[f"{family}-controlnet"], image, 0.9,
                                                               0.0, 1.0)]))
    assert torch.equal(from_file, from_folder)


def test_flux_union_controlnet_matches_the_pipeline(nodes, models_root):
    graph = Graph(nodes, "diffusers/tiny-flux")
    union = nodes["DS_LoadControlNet"].execute(controlnet_name="tiny-flux-union-controlnet", dtype="fp32")[0]
    image = control_image(seed=9)
    positive, _ = nodes["DS_ApplyControlNet"].execute(positive=graph.encode(PROMPT), controlnet=union, image=image,
                                                      strength=0.6, vae=graph.vae, union_mode=2)
    ours = run_graph(graph, nodes["DS_CFGGuider"].execute(positive=positive, cfg=1.0)[0])
    pipe = load_pipeline("FluxControlNetPipeline", models_root["flux_folder"], controlnet=union.module)
    ref = pipe(PROMPT, control_image=bchw(image).contiguous() * 2 - 1, control_mode=2,
               controlnet_conditioning_scale=0.6, num_inference_steps=4, width=64, height=64, guidance_scale=3.5,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(ours, ref)


def test_flux_xlabs_style_controlnet_matches_the_pipeline(nodes, models_root):
    """XLabs-style Flux ControlNets read the control pixels themselves (no VAE) and repeat their blocks."""
    graph = Graph(nodes, "diffusers/tiny-flux")
    net = nodes["DS_LoadControlNet"].execute(controlnet_name="tiny-flux-xlabs-controlnet", dtype="fp32")[0]
    assert net.module.input_hint_block is not None
    image = control_image(seed=10)
    positive, _ = nodes["DS_ApplyControlNet"].execute(positive=graph.encode(PROMPT), controlnet=net, image=image,
                                                      strength=0.8)
    ours = run_graph(graph, nodes["DS_CFGGuider"].execute(positive=positive, cfg=1.0)[0])
    pipe = load_pipeline("FluxControlNetPipeline", models_root["flux_folder"], controlnet=net.module)
    ref = pipe(PROMPT, control_image=bchw(image).contiguous() * 2 - 1, controlnet_conditioning_scale=0.8,
               num_inference_steps=4, width=64, height=64, guidance_scale=3.5,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(ours, ref)


def test_controlnet_with_img2img_matches_the_controlnet_img2img_pipeline(sd1_graph, sd1_pipe, controlnets,
                                                                         models_root):
    """Denoise below 1.0 with a ControlNet, as StableDiffusionControlNetImg2ImgPipeline (strength 0.6). The pipeline
    gets our encoded latents (VAE Encode gives the posterior mode; it would sample), as in the img2img test."""
    net = controlnets["sd1-controlnet"]
    generator = torch.Generator().manual_seed(11)
    init = torch.rand(1, 64, 64, 3, generator=generator)
    image = control_image(seed=12)
    raw = sd1_graph.encode_image(init)
    guider = controlled_guider(sd1_graph, [(net, image, 0.8, 0.0, 1.0)])
    latent = sd1_graph.denoise(guider, sd1_graph.default_scheduler, raw, seed=SEED, steps=5, denoise=0.6)
    pipe = pipeline_with("StableDiffusionControlNetImg2ImgPipeline", models_root["sd1_folder"], [net.module],
                         sd1_pipe)
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, image=raw["samples"] * pipe.vae.config.scaling_factor,
               control_image=bchw(image).contiguous(), strength=0.6, num_inference_steps=5,
               controlnet_conditioning_scale=0.8, generator=torch.Generator("cpu").manual_seed(SEED),
               output_type="pt").images
    assert torch.equal(bchw(sd1_graph.decode(latent)), ref)
