"""Write a diffusers SD1.x/2.x pipeline as one original-layout (LDM) safetensors checkpoint.

Test support: it lets the tests make the single-file checkpoints users have from the
same weights as a diffusers folder. diffusers ships only the opposite direction
(LDM -> diffusers); this is its inverse, written for the SD1/SD2 layout.
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from ..engine.families.ldm_keys import controlnet_key_to_ldm, unet_key_to_ldm

_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in unet.state_dict().items():
        new = unet_key_to_ldm(key, unet.config.layers_per_block,
                              tuple("CrossAttn" in t for t in unet.config.up_block_types))
        if new is not None:
            out["model.diffusion_model." + new] = value
    return out


def controlnet_to_ldm(controlnet) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel in the original ControlNet layout (``control_model.`` prefix), as the
    ``control_v11p_sd15_*`` files: the U-Net encoder's keys plus input_hint_block, zero_convs, middle_block_out."""
    blocks = len(controlnet.controlnet_cond_embedding.blocks)
    out = {}
    for key, value in controlnet.state_dict().items():
        new = controlnet_key_to_ldm(key, controlnet.config.layers_per_block, blocks)
        if new is not None:
            out["control_model." + new] = value
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        parts = key.split(".")
        side = parts[0]
        if side == "bn":  # Flux.2's batch-norm statistics, kept under their own names (BFL's flux2-vae)
            new = key
        elif side in ("quant_conv", "post_quant_conv"):
            new = key
        elif parts[1] in ("conv_in", "conv_out"):
            new = key
        elif parts[1] == "conv_norm_out":
            new = f"{side}.norm_out.{parts[2]}"
        elif parts[1] in ("down_blocks", "up_blocks"):
            i, kind, rest = int(parts[2]), parts[3], ".".join(parts[5:])
            level = i if parts[1] == "down_blocks" else levels - 1 - i
            group = "down" if parts[1] == "down_blocks" else "up"
            if kind == "resnets":
                rest = rest.replace("conv_shortcut", "nin_shortcut")
                new = f"{side}.{group}.{level}.block.{parts[4]}.{rest}"
            else:
                sampler = "downsample" if group == "down" else "upsample"
                new = f"{side}.{group}.{level}.{sampler}.{rest}"
        elif parts[1] == "mid_block":
            kind, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"{side}.mid.block_{j + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                name, _, param = rest.rpartition(".")
                new = f"{side}.mid.attn_1.{_VAE_ATTENTION[name]}.{param}"
                if name != "group_norm" and value.ndim == 2:
                    value = value[:, :, None, None]
        else:
            raise KeyError(f"unexpected VAE key {key}")
        out["first_stage_model." + new] = value
    return out


def flux2_vae_to_bfl(vae) -> dict[str, torch.Tensor]:
    """A Flux.2 VAE as BFL's flux2-vae.safetensors: the LDM names, the quant convs inside encoder / decoder, the
    batch-norm statistics beside them (without the counter)."""
    out = {}
    for key, value in vae_to_ldm(vae).items():
        key = key.removeprefix("first_stage_model.")
        if key.startswith(("quant_conv.", "post_quant_conv.")):
            key = ("encoder." if key.startswith("quant") else "decoder.") + key
        if key != "bn.num_batches_tracked":
            out[key] = value
    return out


def wan_vae_to_original(vae) -> dict[str, torch.Tensor]:
    """A Wan-layout VAE (Qwen-Image's) under its original names, as qwen_image_vae.safetensors."""
    from ..engine.wan_vae import to_original_key

    return {to_original_key(k, vae.config.num_res_blocks): v for k, v in vae.state_dict().items()}


def clip_to_ldm(text_encoder, prefix: str = "cond_stage_model.transformer.text_model.") -> dict[str, torch.Tensor]:
    return {prefix + k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()
            if not k.startswith("text_projection")}


def clip_to_open_clip_ldm(text_encoder, prefix: str = "cond_stage_model.model.",
                          extra_block: bool = True) -> dict[str, torch.Tensor]:
    """OpenCLIP layout: fused q/k/v. SD2 checkpoints hold one more block than diffusers uses (``extra_block``)."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    layers = text_encoder.config.num_hidden_layers
    projection = state.get("text_projection.weight")  # [proj, hidden] in transformers; OpenCLIP stores its transpose
    out = {prefix + "token_embedding.weight": state["embeddings.token_embedding.weight"],
           prefix + "positional_embedding": state["embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": state["final_layer_norm.weight"],
           prefix + "ln_final.bias": state["final_layer_norm.bias"],
           prefix + "text_projection": (projection.T if projection is not None
                                        else torch.eye(text_encoder.config.hidden_size))}
    for i in range(layers + int(extra_block)):
        source = min(i, layers - 1)  # the extra last block: any weights, diffusers drops it
        layer, block = f"encoder.layers.{source}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[block + f"attn.in_proj_{kind}"] = torch.cat(
                [state[layer + f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")])
            out[block + f"attn.out_proj.{kind}"] = state[layer + f"self_attn.out_proj.{kind}"]
            out[block + f"ln_1.{kind}"] = state[layer + f"layer_norm1.{kind}"]
            out[block + f"ln_2.{kind}"] = state[layer + f"layer_norm2.{kind}"]
            out[block + f"mlp.c_fc.{kind}"] = state[layer + f"mlp.fc1.{kind}"]
            out[block + f"mlp.c_proj.{kind}"] = state[layer + f"mlp.fc2.{kind}"]
    return out


def save_sdxl_checkpoint(pipe, path: str) -> None:
    """Save an SDXL pipeline as an SDXL single file: the base with CLIP-L and OpenCLIP-G (conditioner.embedders.0/1),
    the refiner (no first text encoder) with OpenCLIP-G alone as conditioner.embedders.0, as released."""
    tensors = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    if pipe.text_encoder is None:  # the refiner
        tensors.update(clip_to_open_clip_ldm(pipe.text_encoder_2, "conditioner.embedders.0.model.", extra_block=False))
    else:
        tensors.update(clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer.text_model."))
        tensors.update(clip_to_open_clip_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model.", extra_block=False))
    save(tensors, path)


def save_ldm_checkpoint(pipe, path: str, open_clip: bool = False) -> None:
    """Save a StableDiffusionPipeline as an LDM single file (SD1: OpenAI CLIP layout; SD2: ``open_clip=True``)."""
    text = clip_to_open_clip_ldm(pipe.text_encoder) if open_clip else clip_to_ldm(pipe.text_encoder)
    save({**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae), **text}, path)


# ---- SD3 / Flux: the files ComfyUI users have (diffusion_models, text_encoders, whole checkpoints) --------------
def dit_to_original(transformer) -> dict[str, torch.Tensor]:
    """An SD3, Flux.1, Flux.2 or Z-Image transformer in its original release layout (no prefix, as in
    models/diffusion_models); Z-Image's with the final norm the original keeps and diffusers does not use."""
    from ..engine.families import dit_keys

    if "timestep_guidance_channels" in transformer.config:  # Flux.2
        return dit_keys.to_original(transformer.state_dict(), dit_keys.flux2_rules(dict(transformer.config)))
    if "n_refiner_layers" in transformer.config:
        state = dit_keys.to_original(transformer.state_dict(), dit_keys.z_image_rules(dict(transformer.config)))
        return {**state, "norm_final.weight": torch.ones(transformer.config.dim)}
    rules = (dit_keys.flux_rules if "num_single_layers" in transformer.config else dit_keys.sd3_rules)
    return dit_keys.to_original(transformer.state_dict(), rules(dict(transformer.config)))


def text_encoder_file(text_encoder) -> dict[str, torch.Tensor]:
    """A transformers text encoder as in models/text_encoders: CLIP keys under ``text_model.`` (plus
    ``text_projection``), T5 encoder keys with the embedding once as ``shared.weight``, Qwen3 under ``model.``."""
    state = text_encoder.state_dict()
    if "shared.weight" in state:
        return {k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}
    if "Qwen2_5_VL" in type(text_encoder).__name__:  # as qwen_2.5_vl_7b: the original names (model., visual.)
        return {k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): v
                for k, v in state.items()}
    if "Qwen" in type(text_encoder).__name__:  # as ComfyUI's qwen_3_4b: Qwen3ForCausalLM's names, model. first
        return {k if k.startswith("model.") else f"model.{k}": v for k, v in state.items() if k != "lm_head.weight"}
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
            for k, v in state.items() if not k.endswith("position_ids")}


def save_dit_checkpoint(pipe, path: str, text_encoders: dict[str, object], vae_prefix: str) -> None:
    """A whole SD3/Flux checkpoint as ComfyUI saves one: ``model.diffusion_model.``, the VAE under ``vae_prefix``
    (SD3 ``first_stage_model.``, Flux ``vae.``) and ``text_encoders.<clip_l|clip_g|t5xxl>.transformer.``."""
    tensors = {"model.diffusion_model." + k: v for k, v in dit_to_original(pipe.transformer).items()}
    tensors.update({vae_prefix + k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(pipe.vae).items()})
    for name, module in text_encoders.items():
        tensors.update({f"text_encoders.{name}.transformer.{k}": v for k, v in text_encoder_file(module).items()})
    save(tensors, path)


def save(tensors: dict[str, torch.Tensor], path: str) -> None:
    """Tensors as a safetensors file (own, contiguous copies: shared or strided storage cannot be saved)."""
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, path)
