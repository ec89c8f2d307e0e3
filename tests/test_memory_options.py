"""The loaders' memory option: fp8 storage (diffusers' layerwise casting) and group / sequential offload (diffusers'
group offloading by blocks / leaf layers). A graph with each equals the diffusers pipeline whose transformer has
the same diffusers call applied (CPU fp32; on the CPU offloading moves nothing, so the images are those without)."""

from __future__ import annotations

import pytest
import torch
from conftest import Graph, bchw, load_pipeline

from diffusers_stages.engine.errors import StageError

PROMPT, SEED = "a photo of a cat", 5
FILE = "tiny-flux-2-klein.safetensors"


def reference(nodes, models_root, option: str):
    """Flux2KleinPipeline with the file's transformer as our loader reads it (the same file mapped: equal weights at
    the same addresses, see conftest's Graph.in_fresh_memory), the diffusers setting applied to it."""
    from diffusers import Flux2KleinPipeline

    folder = load_pipeline("Flux2KleinPipeline", models_root["flux2_klein_folder"])
    transformer = nodes["DS_LoadDiffusionModel"].execute(model_name=FILE, dtype="fp32")[0].module
    pipe = Flux2KleinPipeline(**{**folder.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    if option == "fp8 storage":
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    elif option != "none":
        level = {"group offload": "block_level", "sequential offload": "leaf_level"}[option]
        pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_type=level,
                                              num_blocks_per_group=1 if level == "block_level" else None)
    return pipe(prompt=PROMPT, guidance_scale=1.0, num_inference_steps=3, width=64, height=64,
                generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images


@pytest.mark.parametrize("option", ["fp8 storage", "group offload", "sequential offload"])
def test_memory_option_equals_the_pipeline_with_the_same_diffusers_setting(nodes, models_root, option):
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    denoiser, scheduler = nodes["DS_LoadDiffusionModel"].execute(model_name=FILE, dtype="fp32", memory=option)
    layer = denoiser.module.transformer_blocks[0].attn.to_q
    if option == "fp8 storage":
        assert layer.weight.dtype == torch.float8_e4m3fn  # stored in fp8 between forwards
    else:
        assert _is_group_offload_enabled(denoiser.module) and denoiser.residency.patcher is None
    folder = Graph(nodes, "diffusers/tiny-flux2-klein")
    graph = Graph(nodes, None, (denoiser, folder.text_encoder, folder.vae, scheduler))
    guider = nodes["DS_CFGGuider"].execute(positive=graph.encode(PROMPT), cfg=1.0)[0]
    ours = bchw(graph.decode(graph.denoise(guider, scheduler, graph.empty(), seed=SEED, steps=3)))
    assert torch.equal(ours, reference(nodes, models_root, option))
    if option != "fp8 storage":  # offloading changes where weights are, not the numbers
        assert torch.equal(ours, reference(nodes, models_root, "none"))


def test_unknown_memory_option_is_refused_by_name(nodes):
    with pytest.raises(StageError, match="Load Diffusion Model.*memory: 'swap to disk' is not a memory option.*Fix: "
                                         "choose one of none, fp8 storage, group offload, sequential offload"):
        nodes["DS_LoadDiffusionModel"].execute(model_name=FILE, dtype="fp32", memory="swap to disk")


def test_layers_the_host_leaves_off_its_device_bring_their_weights_for_each_call():
    """After a partial load (inside ComfyUI), a layer whose weights stayed on the offload device moves them to the
    compute device for each call and back after it; layers wholly on the device get no hook. Checked with the meta
    device standing for a GPU (the only second device a CPU machine has)."""
    from diffusers_stages import host
    from diffusers_stages.engine.quantized import Codec, QuantizedWeight, keep_quantized

    torch.manual_seed(0)
    quantized = torch.nn.Linear(8, 8)
    keep_quantized(quantized, QuantizedWeight(torch.randn(8, 8).to(torch.float8_e4m3fn), Codec("float8_e4m3fn"),
                                              torch.tensor(0.5), (8, 8)), torch.float32)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), quantized, torch.nn.GELU())
    before = {k: v.clone() for k, v in model.state_dict().items()}

    host._offer_partial_loading(model)
    assert model[0].comfy_cast_weights is False and model[1].comfy_cast_weights is False
    assert not hasattr(model[2], "comfy_cast_weights")  # its weight is computed: the host does not read it

    host._stream(model, torch.device("meta"))
    assert all("_stages_stream_hooks" in m.__dict__ for m in model[:3]) and "_stages_stream_hooks" not in \
        model[3].__dict__
    out = model(torch.randn(2, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 8)  # computed where the input is
    after = model.state_dict()
    assert all(v.device.type == "cpu" and torch.equal(v, before[k]) for k, v in after.items())  # back, unchanged

    model.to("meta")
    host._stream(model, torch.device("meta"))  # now wholly on the device: the hooks go
    assert not any("_stages_stream_hooks" in m.__dict__ for m in model)


@pytest.mark.parametrize("option", ["fp8 storage", "group offload"])
def test_memory_option_on_load_diffusers_model_equals_the_pipeline(nodes, models_root, option):
    """The same option on Load Diffusers Model (an SD1.5 folder: the U-Net gets it)."""
    from test_equivalence_sd15 import assert_same_run

    parts = nodes["DS_LoadModel"].execute(model="diffusers/tiny-sd15", repo_id="", dtype="fp32", memory=option)
    pipe = load_pipeline("StableDiffusionPipeline", models_root["sd1_folder"])
    if option == "fp8 storage":
        pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
        assert parts[0].module.conv_in.weight.dtype == torch.float8_e4m3fn
    else:
        pipe.unet.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level",
                                       num_blocks_per_group=1)
    assert_same_run(Graph(nodes, None, parts), pipe, sampler="euler", schedule="normal")
