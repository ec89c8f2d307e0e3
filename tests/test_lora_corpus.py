"""LoRA files as trainers write them, on every family, each equal to diffusers' ``load_lora_weights`` +
``set_adapters`` at two strengths.

The files are written here the way diffusers' training scripts write them: peft adapters (``LoraConfig``) on the
pipeline's own modules, ``get_peft_model_state_dict``, optionally ``convert_state_dict_to_diffusers``, and the
pipeline class's ``save_lora_weights`` with the adapter configs as safetensors metadata (``lora_alpha``,
``rank_pattern``, ``alpha_pattern``, ``use_dora``). kohya files with an alpha other than the rank come from the
exporter the other LoRA tests use.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import Graph, bchw, load_pipeline

PROMPT, NEGATIVE, SEED = "a photo of a cat", "blurry", 4
STRENGTHS = (0.6, 1.3)

FAMILIES = {  # folder, pipeline, denoiser attribute, text encoders with LoRA, attention targets, cfg
    "sd15": ("diffusers/tiny-sd15", "StableDiffusionPipeline", "unet", ("text_encoder",), 7.5),
    "sdxl": ("diffusers/tiny-sdxl", "StableDiffusionXLPipeline", "unet", ("text_encoder", "text_encoder_2"), 5.0),
    "sd3": ("diffusers/tiny-sd3", "StableDiffusion3Pipeline", "transformer", ("text_encoder", "text_encoder_2"), 4.0),
    "flux": ("diffusers/tiny-flux", "FluxPipeline", "transformer", ("text_encoder",), 1.0),
}
DENOISER_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# modules convert_state_dict_to_diffusers has no diffusers-style name for: their keys stay peft-style
MIXED_TARGETS = {"unet": ["proj_in", "proj_out", "ff.net.2"], "transformer": ["ff.net.2", "proj_out"]}
MIXED_TEXT_TARGETS = ["fc1"]

LAYOUTS = {  # name: (parts saved, metadata written, convert to diffusers names, DoRA, extra targets)
    "peft": ("both", False, False, False, False),
    "peft-metadata-alpha": ("both", True, False, False, False),
    "mixed-naming": ("both", True, True, False, True),
    "denoiser-only": ("denoiser", True, False, False, False),
    "text-encoder-only": ("text", True, False, False, False),
    "dora": ("both", True, False, True, False),
}


def lora_config(targets, use_dora: bool):
    from peft import LoraConfig

    # rank 4 at alpha 8 (scale 2), and one module at rank 2 / alpha 6 through the patterns
    return LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, use_dora=use_dora,
                      rank_pattern={targets[1]: 2}, alpha_pattern={targets[1]: 6})


def add_adapter(module, config) -> None:
    """``module.add_adapter(config)``, as the training scripts call it. transformers' own ``add_adapter`` demands
    peft >= 0.22 (unreleased), so the text encoders get the adapter the way it does it, through peft directly."""
    if hasattr(module, "set_adapters"):  # a diffusers model
        module.add_adapter(config)
        return
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, module, adapter_name="default")
    module.peft_config = {"default": config}


def write_trainer_lora(folder: str, family: str, layout: str, path: str, seed: int) -> None:
    """A LoRA written the way diffusers' training scripts write it."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    _, pipeline_class, denoiser_name, texts, _ = FAMILIES[family]
    parts, with_metadata, convert, dora, mixed = LAYOUTS[layout]
    pipe = load_pipeline(pipeline_class, folder)
    torch.manual_seed(seed)
    modules = {}
    if parts in ("both", "denoiser"):
        modules[denoiser_name] = (getattr(pipe, denoiser_name),
                                  DENOISER_TARGETS + (MIXED_TARGETS[denoiser_name] if mixed else []))
    if parts in ("both", "text"):
        for name in texts:
            modules[name] = (getattr(pipe, name), TEXT_TARGETS + (MIXED_TEXT_TARGETS if mixed else []))
    kwargs = {}
    for name, (module, targets) in modules.items():
        config = lora_config(targets, dora)
        add_adapter(module, config)
        with torch.no_grad():  # peft starts B at zero for DoRA too: make every matrix count
            for parameter_name, parameter in module.named_parameters():
                if "lora_" in parameter_name:
                    parameter.normal_(0.0, 0.2)
        layers = get_peft_model_state_dict(module)
        kwargs[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(layers) if convert else layers
        if with_metadata:
            kwargs[f"{name}_lora_adapter_metadata"] = config.to_dict()
    type(pipe).save_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path), **kwargs)


@pytest.fixture(scope="module")
def corpus(models_root):
    """{(family, layout): file name in models/loras}."""
    folder = os.path.join(models_root["root"], "loras")
    files = {}
    for index, family in enumerate(FAMILIES):
        for number, layout in enumerate(LAYOUTS):
            name = f"corpus-{family}-{layout}.safetensors"
            write_trainer_lora(os.path.join(models_root["root"], FAMILIES[family][0]), family, layout,
                               os.path.join(folder, name), seed=100 * index + number)
            files[(family, layout)] = name
    return files


def ours(nodes, family: str, lora_file: str, strength: float) -> torch.Tensor:
    graph = Graph(nodes, FAMILIES[family][0])
    denoiser, text_encoder = nodes["DS_LoadLoRA"].execute(
        denoiser=graph.denoiser, text_encoder=graph.text_encoder, lora_name=lora_file, strength_model=strength,
        strength_text_encoder=strength)
    lora = Graph(nodes, None, (denoiser, text_encoder, graph.vae, graph.default_scheduler))
    cfg = FAMILIES[family][4]
    negative = lora.encode(NEGATIVE) if cfg > 1 else None
    guider = nodes["DS_CFGGuider"].execute(positive=lora.encode(PROMPT), negative=negative, cfg=cfg)[0]
    return bchw(lora.decode(lora.denoise(guider, lora.default_scheduler, lora.empty(), seed=SEED)))


def put_back_text_dora_magnitudes(pipe, family: str, path: str) -> None:
    """transformers' ``load_adapter`` (5.24, peft 0.21) drops a text encoder's DoRA magnitude vectors and leaves
    them at a random initial value, so the pipeline's own text-encoder DoRA is not reproducible. The reference
    gets the file's vectors put back (what peft's ``set_peft_model_state_dict`` would load); everything else is
    diffusers' own loading."""
    from safetensors.torch import load_file

    state = load_file(path)
    for prefix in FAMILIES[family][3]:
        encoder = getattr(pipe, prefix)
        for key, value in state.items():
            if key.startswith(f"{prefix}.") and key.endswith(".lora_magnitude_vector"):
                module_path = key[len(prefix) + 1:-len(".lora_magnitude_vector")]
                if not hasattr(encoder, "text_model"):  # CLIP is flattened in transformers 5
                    module_path = module_path.removeprefix("text_model.")
                with torch.no_grad():
                    encoder.get_submodule(module_path).lora_magnitude_vector["lora"].weight.copy_(value)


def reference(models_root, family: str, lora_file: str, strength: float) -> torch.Tensor:
    folder, pipeline_class, _, _, cfg = FAMILIES[family]
    pipe = load_pipeline(pipeline_class, os.path.join(models_root["root"], folder))
    path = os.path.join(models_root["root"], "loras", lora_file)
    pipe.load_lora_weights(path, adapter_name="lora")
    put_back_text_dora_magnitudes(pipe, family, path)
    pipe.set_adapters(["lora"], adapter_weights=[strength])
    guidance = {"guidance_scale": 3.5} if family == "flux" else {"guidance_scale": cfg, "negative_prompt": NEGATIVE}
    return pipe(PROMPT, num_inference_steps=4, width=64, height=64, generator=torch.Generator("cpu").manual_seed(SEED),
                output_type="pt", **guidance).images


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_trainer_written_lora_equals_load_lora_weights(nodes, models_root, corpus, family, layout):
    name = corpus[(family, layout)]
    images = [ours(nodes, family, name, strength) for strength in STRENGTHS]
    for strength, image in zip(STRENGTHS, images):
        assert torch.equal(image, reference(models_root, family, name, strength)), (family, layout, strength)
    assert not torch.equal(*images)  # the strength matters


def test_metadata_alpha_is_honoured(nodes, models_root, corpus):
    """The file says rank 4, alpha 8 (k: rank 2, alpha 6): diffusers scales by 2 (and 3), and so do we; the same
    tensors without the metadata give another image (the alpha was ignored before)."""
    import json

    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = os.path.join(models_root["root"], "loras", corpus[("sd15", "peft-metadata-alpha")])
    with safe_open(path, "pt") as f:
        metadata = json.loads(f.metadata()[LORA_ADAPTER_METADATA_KEY])
    assert metadata["unet.lora_alpha"] == 8 and metadata["unet.r"] == 4 and metadata["unet.alpha_pattern"] == {
        "to_k": 6}
    save_file(load_file(path), os.path.join(models_root["root"], "loras", "corpus-no-metadata.safetensors"))
    assert not torch.equal(ours(nodes, "sd15", "corpus-no-metadata.safetensors", 1.0),
                           ours(nodes, "sd15", corpus[("sd15", "peft-metadata-alpha")], 1.0))


@pytest.mark.parametrize("family, alpha", [("sd15", 1.0), ("sdxl", 3.0)])
def test_kohya_network_alphas_other_than_the_rank(nodes, models_root, family, alpha):
    """kohya/A1111 files whose alpha differs from the rank (scale alpha/rank), against load_lora_weights."""
    from diffusers_stages.tiny.lora_export import lora_layers, save_kohya_lora

    folder, pipeline_class, *_ = FAMILIES[family]
    pipe = load_pipeline(pipeline_class, os.path.join(models_root["root"], folder))
    name = f"corpus-{family}-kohya-alpha.safetensors"
    save_kohya_lora(lora_layers(pipe, seed=7), os.path.join(models_root["root"], "loras", name),
                    unet=pipe.unet if family == "sdxl" else None, alpha=alpha)
    for strength in STRENGTHS:
        assert torch.equal(ours(nodes, family, name, strength), reference(models_root, family, name, strength))
