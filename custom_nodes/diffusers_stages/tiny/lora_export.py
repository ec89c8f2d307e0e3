"""Random-weight LoRA files for the tiny models, in the two layouts people have: diffusers/peft and kohya/A1111."""

from __future__ import annotations

import torch

from .ldm_export import save

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # also the DiTs' attention projections
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
RANK = 2


def lora_layers(pipe, seed: int, text_encoders: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{'<component>.<module path>': (down [r, in], up [out, r])} for the attention projections of the U-Net and
    (``text_encoders``) every CLIP text encoder of ``pipe``; both matrices random (a fresh LoRA's zero up-matrix
    would change nothing)."""
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    denoiser = ("unet", pipe.unet) if hasattr(pipe, "unet") else ("transformer", pipe.transformer)
    components = [(*denoiser, UNET_TARGETS)]
    if text_encoders:
        components.append(("text_encoder", pipe.text_encoder, TEXT_TARGETS))
    second = getattr(pipe, "text_encoder_2", None)
    # SDXL's and SD3's second encoder is a CLIP (Flux's is T5)
    if text_encoders and second is not None and "CLIP" in type(second).__name__:
        components.append(("text_encoder_2", second, TEXT_TARGETS))
    for prefix, module, targets in components:
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear) and name.endswith(targets):
                down = torch.randn(RANK, layer.in_features, generator=generator) * 0.3
                up = torch.randn(layer.out_features, RANK, generator=generator) * 0.3
                layers[f"{prefix}.{name}"] = (down, up)
    return layers


def save_diffusers_lora(pipe, path: str, seed: int, text_encoders: bool = True):
    """diffusers/peft layout (what ``save_lora_weights`` writes): ``<component>.<path>.lora_A/lora_B.weight``."""
    layers = lora_layers(pipe, seed, text_encoders)
    tensors = {}
    for name, (down, up) in layers.items():
        tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = down, up
    save(tensors, path)
    return layers


def save_kohya_lora(layers: dict[str, tuple[torch.Tensor, torch.Tensor]], path: str, unet=None,
                    alpha: float = float(RANK)) -> None:
    """kohya/A1111 layout of the same LoRA: ``lora_unet_<path>`` / ``lora_te_text_model_<path>`` with
    ``lora_down``/``lora_up`` and an ``alpha`` (default: the rank, scale 1). With ``unet`` (SDXL, as sd-scripts
    writes it) the U-Net paths are the original (SGM) block names and the text encoders ``lora_te1_``/``lora_te2_``."""
    from ..engine.families.ldm_keys import unet_key_to_ldm

    tensors = {}
    for name, (down, up) in layers.items():
        component, _, module_path = name.partition(".")
        if component == "unet" and unet is not None:
            up_attention = tuple("CrossAttn" in t for t in unet.config.up_block_types)
            original = unet_key_to_ldm(module_path + ".weight", unet.config.layers_per_block, up_attention)
            key = "lora_unet_" + original.removesuffix(".weight").replace(".", "_")
        elif component == "unet":
            key = "lora_unet_" + module_path.replace(".", "_")
        else:
            te = {"text_encoder": "te1" if unet is not None else "te", "text_encoder_2": "te2"}[component]
            key = f"lora_{te}_" + ("text_model." + module_path.removeprefix("text_model.")).replace(".", "_")
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
        tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    save(tensors, path)


def save_comfy_lora(layers: dict[str, tuple[torch.Tensor, torch.Tensor]], unet, path: str) -> None:
    """The U-Net part of a LoRA as ComfyUI's trainer saves it: ``diffusion_model.<original-layout module>.lora_up/
    lora_down.weight`` (no alpha: scale 1), plus one full ``.diff`` delta of the kind a LoRA adapter cannot hold."""
    from ..engine.families.ldm_keys import unet_key_to_ldm

    tensors = {}
    for name, (down, up) in layers.items():
        component, _, module_path = name.partition(".")
        if component != "unet":
            continue
        module = unet_key_to_ldm(module_path + ".weight", unet.config.layers_per_block).removesuffix(".weight")
        tensors[f"diffusion_model.{module}.lora_down.weight"] = down
        tensors[f"diffusion_model.{module}.lora_up.weight"] = up
    tensors["diffusion_model.out.0.diff"] = torch.zeros(unet.config.block_out_channels[0])
    save(tensors, path)


def save_kohya_flux_lora(transformer, path: str, seed: int) -> None:
    """A kohya (sd-scripts) Flux LoRA on the double blocks' fused q/k/v and output projections, original (BFL)
    module names: ``lora_unet_double_blocks_<i>_img_attn_qkv`` …"""
    generator = torch.Generator().manual_seed(seed)
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    tensors = {}
    for i in range(transformer.config.num_layers):
        for stream in ("img", "txt"):
            for layer, out in (("attn_qkv", 3 * width), ("attn_proj", width)):
                key = f"lora_unet_double_blocks_{i}_{stream}_{layer}"
                tensors[f"{key}.lora_down.weight"] = torch.randn(RANK, width, generator=generator) * 0.3
                tensors[f"{key}.lora_up.weight"] = torch.randn(out, RANK, generator=generator) * 0.3
                tensors[f"{key}.alpha"] = torch.tensor(float(RANK))
    save(tensors, path)


def save_trainer_layouts(layers: dict[str, tuple[torch.Tensor, torch.Tensor]], prefixed: str, kohya: str) -> None:
    """A DiT LoRA (``transformer.<path>`` layers) as community trainers save it: ``diffusion_model.<path>.lora_A/B``
    (ai-toolkit, musubi-tuner) and kohya's ``lora_unet_<path with _>.lora_down/up`` with alpha = rank."""
    first, second = {}, {}
    for name, (down, up) in layers.items():
        module = name.removeprefix("transformer.")
        first[f"diffusion_model.{module}.lora_A.weight"], first[f"diffusion_model.{module}.lora_B.weight"] = down, up
        key = "lora_unet_" + module.replace(".", "_")
        second[f"{key}.lora_down.weight"], second[f"{key}.lora_up.weight"] = down, up
        second[f"{key}.alpha"] = torch.tensor(float(down.shape[0]))
    save(first, prefixed)
    save(second, kohya)


def save_original_layout_lora(original: dict[str, torch.Tensor], path: str, seed: int) -> None:
    """A LoRA on every linear layer of the transformer blocks of a DiT in its original (BFL) layout, as ai-toolkit
    writes Flux.2 LoRAs: ``diffusion_model.<original path>.lora_A/B.weight`` (fused q/k/v layers take one LoRA)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, weight in original.items():
        if key.startswith(("double_blocks.", "single_blocks.")) and key.endswith(".weight") and weight.ndim == 2:
            module = key.removesuffix(".weight")
            tensors[f"diffusion_model.{module}.lora_A.weight"] = torch.randn(RANK, weight.shape[1],
                                                                           generator=generator) * 0.3
            tensors[f"diffusion_model.{module}.lora_B.weight"] = torch.randn(weight.shape[0], RANK,
                                                                           generator=generator) * 0.3
    save(tensors, path)
