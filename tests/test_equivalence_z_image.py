"""Z-Image: our node graph against ZImagePipeline / ZImageImg2ImgPipeline (torch.equal, CPU fp32)."""

from __future__ import annotations

import pytest
import torch
from conftest import Graph, bchw, load_pipeline

from diffusers_stages.engine.errors import StageError

SEED = 11
PROMPT, NEGATIVE = "a photo of a cat", "blurry"


@pytest.fixture(scope="module")
def z_graph(nodes):
    return Graph(nodes, "diffusers/tiny-z-image")


@pytest.fixture(scope="module")
def z_pipe(models_root):
    return load_pipeline("ZImagePipeline", models_root["zimage_folder"])


def test_z_image_encode_matches_pipeline(z_graph, z_pipe):
    cond = z_graph.encode(PROMPT)
    with torch.no_grad():
        embeds, _ = z_pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    assert cond.embeds.shape[0] == 1 and torch.equal(cond.embeds[0], embeds[0])


@pytest.mark.parametrize("width, height, batch, cfg", [(64, 64, 1, 5.0), (96, 64, 2, 1.0), (64, 96, 2, 3.5)])
def test_z_image_txt2img_matches_pipeline(z_graph, z_pipe, width, height, batch, cfg):
    """cfg 1 = Z-Image-Turbo's guidance_scale 0 (no CFG); otherwise the pipeline's guidance_scale is cfg - 1."""
    latent = z_graph.denoise(z_graph.guider(PROMPT, NEGATIVE, cfg), z_graph.default_scheduler,
                             z_graph.empty(width, height, batch), seed=SEED, steps=5)
    assert latent["samples"].shape == (batch, 16, height // 8, width // 8)  # core's Flux latent layout
    ref = z_pipe(PROMPT, negative_prompt=NEGATIVE, guidance_scale=cfg - 1.0, num_inference_steps=5, width=width,
                 height=height, num_images_per_prompt=batch, generator=torch.Generator("cpu").manual_seed(SEED),
                 output_type="pt").images
    assert torch.equal(bchw(z_graph.decode(latent)), ref)


def test_z_image_without_negative_guides_from_the_empty_prompt(z_graph, z_pipe, nodes):
    guider = nodes["DS_CFGGuider"].execute(positive=z_graph.encode(PROMPT), cfg=4.0)[0]
    latent = z_graph.denoise(guider, z_graph.default_scheduler, z_graph.empty(), seed=SEED, steps=4)
    ref = z_pipe(PROMPT, guidance_scale=3.0, num_inference_steps=4, width=64, height=64,
                 generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(bchw(z_graph.decode(latent)), ref)


def test_z_image_img2img_matches_pipeline(z_graph, z_pipe):
    from diffusers import ZImageImg2ImgPipeline

    torch.manual_seed(4)
    image = torch.rand(1, 64, 96, 3)
    raw = z_graph.encode_image(image)
    latent = z_graph.denoise(z_graph.guider(PROMPT, NEGATIVE, 4.0), z_graph.default_scheduler, raw, seed=SEED,
                             steps=5, denoise=0.6)
    pipe = ZImageImg2ImgPipeline(**z_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    # our VAE Encode gives the posterior's mode; the pipeline samples it, so it is given our latents (its
    # prepare_latents takes an "image" with the latent channel count as latents; its image processor, which would
    # resize them as pixels, is bypassed)
    pipe.image_processor.preprocess = lambda image, *args, **kwargs: image
    denoiser = z_graph.denoiser
    scaled = (raw["samples"] - denoiser.latent_shift) * denoiser.latent_scale
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, image=scaled, strength=0.6, guidance_scale=3.0,
               num_inference_steps=5, height=64, width=96, generator=torch.Generator("cpu").manual_seed(SEED),
               output_type="pt").images
    assert torch.equal(bchw(z_graph.decode(latent)), ref)


def test_z_image_wiring_refused(z_graph, nodes):
    flux = Graph(nodes, "diffusers/tiny-flux")
    with pytest.raises(StageError, match="encoded by a Flux.1 text encoder, but the denoiser is Z-Image"):
        z_graph.denoise(flux.guider(PROMPT, NEGATIVE, 4.0), z_graph.default_scheduler, z_graph.empty())
    with pytest.raises(StageError, match="clip_skip: .*Fix: set clip_skip to 0"):
        z_graph.encode(PROMPT, clip_skip=1)
    with pytest.raises(StageError, match="not a multiple of 16"):
        nodes["DS_EmptyLatent"].execute(denoiser=z_graph.denoiser, width=72, height=64, batch_size=1)


@pytest.mark.parametrize("key", ["zimage_lora", "zimage_lora_prefixed", "zimage_lora_kohya"])
def test_z_image_lora_matches_the_pipeline(nodes, models_root, z_graph, key):
    """diffusers' ZImageLoraLoaderMixin (transformer layers; it loads none for the Qwen3 text encoder), on the
    diffusers layout and the layouts community trainers write (diffusion_model.… lora_A/B; kohya)."""
    import os

    from test_lora import with_loras

    graph = with_loras(z_graph, (os.path.basename(models_root[key]), 0.7, 1.0))
    ours = bchw(graph.decode(graph.denoise(graph.guider(PROMPT, NEGATIVE, 4.0), graph.default_scheduler,
                                           graph.empty(), seed=SEED, steps=4)))
    pipe = load_pipeline("ZImagePipeline", models_root["zimage_folder"])
    pipe.load_lora_weights(models_root[key], adapter_name="lora")
    pipe.set_adapters(["lora"], adapter_weights=[0.7])
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, guidance_scale=3.0, num_inference_steps=4, width=64, height=64,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert torch.equal(ours, ref)
    plain = bchw(z_graph.decode(z_graph.denoise(z_graph.guider(PROMPT, NEGATIVE, 4.0), z_graph.default_scheduler,
                                                z_graph.empty(), seed=SEED, steps=4)))
    assert not torch.equal(ours, plain)


def test_z_image_split_files_equal_the_folder(nodes, z_graph):
    """z_image_turbo_bf16 + qwen_3_4b + ae as ComfyUI users keep them (original transformer layout, Qwen3ForCausalLM
    names) ≡ the diffusers folder; compared in fresh memory (see Graph.in_fresh_memory)."""
    from test_component_files import image, same_scheduler, split_graph

    vae = nodes["DS_LoadVAE"].execute(vae_name="tiny-z-image-ae.safetensors", dtype="fp32")[0]
    split = split_graph(nodes, "tiny-z-image-turbo.safetensors", "zimage", vae, llm="tiny-qwen-3.safetensors")
    assert same_scheduler(split.default_scheduler, z_graph.default_scheduler)
    assert torch.equal(image(split), image(z_graph))
    assert torch.equal(image(split, cfg=1.0, width=96), image(z_graph, cfg=1.0, width=96))


def test_z_image_layout_rules_equal_diffusers_converter(models_root):
    from diffusers import ZImageTransformer2DModel
    from diffusers.loaders import single_file_utils
    from safetensors.torch import load_file

    from diffusers_stages.engine.families import dit_keys

    original = load_file(models_root["zimage_dit"])
    config = dit_keys.z_image_config({k: tuple(v.shape) for k, v in original.items()})
    target = {k: tuple(v.shape) for k, v in ZImageTransformer2DModel(**config).state_dict().items()}
    converted, unused, missing = dit_keys.to_diffusers(original, dit_keys.z_image_rules(config), target)
    assert not unused and not missing
    reference = single_file_utils.convert_z_image_transformer_checkpoint_to_diffusers(dict(original))
    assert reference.keys() == converted.keys()
    assert all(torch.equal(reference[k], converted[k]) for k in reference)


def test_z_image_text_encoder_file_mistakes_are_named(nodes):
    with pytest.raises(StageError, match="llm: .tiny-flux-t5xxl.safetensors. is a T5-XXL text encoder, not the Qwen3"):
        nodes["DS_LoadTextEncoders"].execute(family="zimage", clip_l="none", clip_g="none", t5="none",
                                             llm="tiny-flux-t5xxl.safetensors", dtype="fp32")
    with pytest.raises(StageError, match="llm: Z-Image needs a Qwen3 4B"):
        nodes["DS_LoadTextEncoders"].execute(family="zimage", clip_l="none", clip_g="none", t5="none",
                                             llm="none", dtype="fp32")
    with pytest.raises(StageError, match="llm: Flux.1 takes no LLM text encoder. Fix: set llm to none"):
        nodes["DS_LoadTextEncoders"].execute(family="flux", clip_l="tiny-flux-clip_l.safetensors", clip_g="none",
                                             t5="tiny-flux-t5xxl.safetensors", llm="tiny-qwen-3.safetensors",
                                             dtype="fp32")
    with pytest.raises(StageError, match="clip_l: Z-Image has no CLIP-L"):
        nodes["DS_LoadTextEncoders"].execute(family="zimage", clip_l="tiny-flux-clip_l.safetensors", clip_g="none",
                                             t5="none", llm="tiny-qwen-3.safetensors", dtype="fp32")


def test_qwen_tokenizer_missing_offline_says_where_to_put_one(models_root):
    from safetensors.torch import load_file

    from diffusers_stages.engine.errors import InputError
    from diffusers_stages.engine.text_files import qwen3_part

    with pytest.raises(InputError, match="'qwen3': no Qwen tokenizer was found .*models/text_encoders/qwen_tokenizer"):
        qwen3_part(load_file(models_root["zimage_qwen3"]), torch.float32, [], "qwen3")


def test_z_image_in_bf16_keeps_float32_latents_as_its_pipeline(nodes, models_root):
    """ZImagePipeline keeps noise and scheduler steps in float32 whatever the model's precision (the family's
    latents_dtype); in bf16 the denoised latents equal the pipeline's bit for bit. (The decoded images differ in
    the last bf16 bit: the pipeline casts the latents to the VAE's bf16 before unscaling, LATENT is unscaled
    first.)"""
    from diffusers_stages.engine.denoise import run

    graph = Graph(nodes, None, nodes["DS_LoadModel"].execute(model="diffusers/tiny-z-image", repo_id="",
                                                             dtype="bf16"))
    denoised = run(graph.denoiser, graph.guider(PROMPT, NEGATIVE, 4.0), graph.default_scheduler,
                   graph.empty()["samples"], SEED, 5)
    pipe = load_pipeline("ZImagePipeline", models_root["zimage_folder"], torch_dtype=torch.bfloat16)
    expected = pipe(PROMPT, negative_prompt=NEGATIVE, guidance_scale=3.0, num_inference_steps=5, width=64, height=64,
                    generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent").images
    assert denoised.model.dtype == torch.float32 and torch.equal(denoised.model, expected)


@pytest.mark.parametrize("name, cfg, batch, width, height", [
    ("tiny-zimage-controlnet", 1.0, 1, 64, 64), ("tiny-zimage-controlnet", 4.0, 2, 96, 64),
    ("tiny-zimage-controlnet-2-1", 3.0, 1, 64, 96)])
def test_z_image_controlnet_matches_the_pipeline(nodes, models_root, z_graph, name, cfg, batch, width, height):
    """ZImageControlNetPipeline (VideoX-Fun's Union ControlNets 1.0 and 2.1, the latter padding the control latents
    to 33 channels): control latents from the posterior mode, batched with CFG as the pipeline batches them."""
    from diffusers import ZImageControlNetPipeline
    from test_controlnet import SEED as CONTROL_SEED
    from test_controlnet import control_image, run_graph

    net = nodes["DS_LoadControlNet"].execute(controlnet_name=name, dtype="fp32")[0]
    image = control_image(height, width, seed=6)
    negative = z_graph.encode(NEGATIVE) if cfg > 1 else None
    positive, negative = nodes["DS_ApplyControlNet"].execute(
        positive=z_graph.encode(PROMPT), negative=negative, controlnet=net, image=image, strength=0.75,
        vae=z_graph.vae)
    guider = nodes["DS_CFGGuider"].execute(positive=positive, cfg=cfg,
                                           **({"negative": negative} if negative is not None else {}))[0]
    ours = run_graph(z_graph, guider, width, height, batch)
    reference = type(net.module).from_pretrained(models_root[name.replace("tiny-", "").replace("-", "_")])
    pipe = ZImageControlNetPipeline(**{k: v for k, v in load_pipeline(
        "ZImagePipeline", models_root["zimage_folder"]).components.items()}, controlnet=reference)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, negative_prompt=NEGATIVE if cfg > 1 else None, control_image=bchw(image).contiguous() * 2 - 1,
               controlnet_conditioning_scale=0.75, guidance_scale=cfg - 1.0, num_inference_steps=4, width=width,
               height=height, num_images_per_prompt=batch, generator=torch.Generator("cpu").manual_seed(CONTROL_SEED),
               output_type="pt").images
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("single, folder", [("tiny-zimage-controlnet.safetensors", "tiny-zimage-controlnet"),
                                            ("tiny-zimage-controlnet-2-1.safetensors", "tiny-zimage-controlnet-2-1")])
def test_z_image_controlnet_file_equals_its_folder(nodes, z_graph, single, folder):
    """The released single files (no config inside): the version, widths and control-layer places are read back."""
    from test_controlnet import control_image, run_graph

    image = control_image(seed=5)
    from_file, from_folder = (nodes["DS_LoadControlNet"].execute(controlnet_name=name, dtype="fp32")[0]
                              for name in (single, folder))
    assert {k: v for k, v in from_file.module.config.items() if not k.startswith("_")} == {
        k: v for k, v in from_folder.module.config.items() if not k.startswith("_")}

    def image_with(net):
        positive, _ = nodes["DS_ApplyControlNet"].execute(positive=z_graph.encode(PROMPT), controlnet=net,
                                                          image=image, vae=z_graph.vae)
        return run_graph(z_graph, nodes["DS_CFGGuider"].execute(positive=positive, cfg=1.0)[0])
    assert torch.equal(image_with(from_file), image_with(from_folder))


def test_z_image_controlnet_2_0_file_drops_its_unused_refiner(nodes, models_root):
    """2.0 files carry control_noise_refiner weights with a zero input projection that the model does not use
    (diffusers' single-file loader drops them): read as the 'control_layers' kind."""
    net = nodes["DS_LoadControlNet"].execute(controlnet_name="tiny-zimage-controlnet-2-0.safetensors",
                                             dtype="fp32")[0]
    assert net.module.config.add_control_noise_refiner == "control_layers"
    assert net.module.control_noise_refiner is None and net.module.config.control_in_dim == 33
