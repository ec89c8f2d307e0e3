"""Stable Diffusion 1.x and 2.x: a UNet2DConditionModel, one CLIP text encoder, a 4-channel AutoencoderKL.

Epsilon and v-prediction models are both covered; the prediction type lives in the
scheduler config, as in diffusers.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch

from ..components import Conditioning, Denoiser, TextEncoder, TextPart
from ..family import Family, LoadedModel, ModelInputs, TextSlot
from . import controlnet_files
from .bundled_configs import bundled_config, infer_text_encoder_config, infer_unet_config, infer_vae_config
from .clip_text import check_clip_skip, encode_clip, repeat_batch, same_length
from .folders import assemble, load_component, load_tokenizer, scheduler_config, with_prediction

_UNET = "model.diffusion_model."
_CLIP = "cond_stage_model.transformer.text_model."
_OPEN_CLIP = "cond_stage_model.model."


def union_control_type(controlnet, mode: int, batch: int) -> torch.Tensor:
    """ControlNetUnionModel's one-hot control type for ``mode`` (as StableDiffusionXLControlNetUnionPipeline)."""
    control_type = torch.zeros(controlnet.config.num_control_type)
    control_type[mode] = 1
    return control_type.reshape(1, -1).to(controlnet.device, dtype=controlnet.dtype).repeat(batch, 1)


def is_unet_file(keys) -> bool:
    """A whole U-Net in the original (LDM) layout, with or without ``model.diffusion_model.``."""
    return any(k in keys for k in (f"{p}out.2.weight" for p in ("", _UNET))) and any(
        k in keys for k in (f"{p}input_blocks.0.0.weight" for p in ("", _UNET)))


def has_text_time_embedding(keys) -> bool:
    return f"{_UNET}label_emb.0.0.weight" in keys or "label_emb.0.0.weight" in keys


def unet_from_file(path: str, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, base: dict[str, Any],
                   heads: str, input_name: str):
    """A U-Net file from models/diffusion_models (original layout), architecture from its tensors."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from ..weights import empty, fill, read_tensors

    prefix = _UNET if any(k.startswith(_UNET) for k in shapes) else ""
    config = infer_unet_config(base, {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)},
                               heads, at="")
    tensors = {_UNET + k: v for k, v in read_tensors(path, prefix).items()}  # the converter reads the LDM prefix
    state = convert_ldm_unet_checkpoint(tensors, config)
    return fill(empty(UNet2DConditionModel, config), state, dtype, "U-Net", input_name)


def write_skeleton(directory: str, configs: dict[str, dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    """A config-only diffusers folder (configs + tokenizers, no weights) for ``from_single_file(config=...)``."""
    for name, config in configs.items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f)
    for subfolder, tokenizer in tokenizers.items():
        tokenizer.save_pretrained(os.path.join(directory, subfolder))


class StableDiffusionFamily(Family):
    id = "sd15"
    controlnet_classes = ("ControlNetModel",)

    def claims_controlnet(self, class_name, config):
        return class_name == "ControlNetModel" and config.get("addition_embed_type") != "text_time"

    def claims_controlnet_file(self, shapes, name):
        return controlnet_files.controlnet_kind(shapes, name) == "sd"

    def controlnet_from_file(self, path, shapes, dtype):
        return controlnet_files.controlnet_from_file(path, shapes, dtype)

    display_name = "Stable Diffusion 1.x/2.x"
    latent_channels = 4
    spatial_factor = 8
    size_multiple = 8
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                        "StableDiffusionInpaintPipeline", "StableDiffusionControlNetPipeline")
    host_latent_format = "SD15"
    lora_pipeline = "StableDiffusionPipeline"
    lora_text_prefixes = ("text_encoder",)
    latent_scaling = (0.18215, 0.0)
    text_slots = (TextSlot("clip_l", projection=False),)  # SD1.x's CLIP-L (SD2's OpenCLIP-H has no split file)

    # ---- loading -------------------------------------------------------------------------------
    def claims_checkpoint(self, keys) -> bool:
        has_unet = f"{_UNET}input_blocks.0.0.weight" in keys and f"{_UNET}label_emb.0.0.weight" not in keys
        has_text = any(k.startswith((_CLIP, _OPEN_CLIP)) for k in keys)
        return has_unet and has_text

    def claims_denoiser(self, keys) -> bool:
        return is_unet_file(keys) and not has_text_time_embedding(keys)

    def denoiser_from_file(self, path, shapes, dtype, input_name):
        """SD1.x (8 heads, epsilon) or, with a 1024-wide cross attention, SD2.x (64-wide heads, v-prediction as
        the 768 px release; set the prediction with Scheduler if yours differs)."""
        cross = next(v[1] for k, v in shapes.items() if k.endswith("input_blocks.1.1.transformer_blocks.0.attn2.to_k"
                                                                      ".weight"))
        base = bundled_config("sd2" if cross == 1024 else "sd1")
        module = unet_from_file(path, shapes, dtype, base["unet"], "per64" if cross == 1024 else "fixed",
                                input_name)
        return module, dict(base["scheduler"])

    def load_folder(self, path: str, dtype: torch.dtype, prediction: str) -> LoadedModel:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        parts = (TextPart(load_tokenizer(path, CLIPTokenizer, "tokenizer"),
                          load_component(path, CLIPTextModel, "text_encoder", dtype)),)
        return assemble(self, load_component(path, UNet2DConditionModel, "unet", dtype), parts,
                        load_component(path, AutoencoderKL, "vae", dtype), scheduler_config(path, prediction), path)

    def single_file_skeleton(self, shapes: dict[str, tuple[int, ...]], prediction: str,
                             vocab_dirs: tuple[str, ...], directory: str) -> None:
        """Write a config-only diffusers folder describing the checkpoint (no weights, no network)."""
        from ..clip_vocab import build_clip_tokenizer

        sd2 = any(k.startswith(_OPEN_CLIP) for k in shapes)
        base = bundled_config("sd2" if sd2 else "sd1")
        scheduler = dict(base["scheduler"])
        if prediction == "auto" and "v_pred" in shapes:  # the marker some v-prediction checkpoints carry
            prediction = "v_prediction"
        text = (infer_text_encoder_config(base["text_encoder"], shapes, "open_clip", _OPEN_CLIP, drop_last=True)
                if sd2 else infer_text_encoder_config(base["text_encoder"], shapes, "clip", _CLIP))
        configs = {
            "unet/config.json": infer_unet_config(base["unet"], shapes, "per64" if sd2 else "fixed"),
            "vae/config.json": infer_vae_config(base["vae"], shapes),
            "text_encoder/config.json": text,
            "scheduler/scheduler_config.json": with_prediction(scheduler, prediction),
            "model_index.json": {
                "_class_name": base["pipeline"], "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", scheduler["_class_name"]],
                "safety_checker": [None, None], "feature_extractor": [None, None],
                "requires_safety_checker": False,
            },
        }
        tokenizer = build_clip_tokenizer(text["vocab_size"], pad_token=base["tokenizer_pad_token"],
                                         extra_dirs=vocab_dirs)
        write_skeleton(directory, configs, {"tokenizer": tokenizer})

    def load_single_file(self, path, keys, dtype, prediction, vocab_dirs, t5_dirs=()) -> LoadedModel:
        from diffusers import StableDiffusionPipeline

        with tempfile.TemporaryDirectory(prefix="ds-config-") as skeleton:
            self.single_file_skeleton(keys, prediction, vocab_dirs, skeleton)
            pipe = StableDiffusionPipeline.from_single_file(
                path, config=skeleton, local_files_only=True, torch_dtype=dtype,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
        return assemble(self, pipe.unet, (TextPart(pipe.tokenizer, pipe.text_encoder),), pipe.vae,
                        dict(pipe.scheduler.config), path)

    # ---- conditioning ----------------------------------------------------------------------------
    def encode_prompt(self, text_encoder: TextEncoder, text: str, clip_skip: int, t5_max_length: int = 0):
        (part,) = text_encoder.parts
        check_clip_skip(part, clip_skip)
        # clip_skip k: hidden state k layers before the last, through the final layer norm (as diffusers)
        out = encode_clip(part, text, None if clip_skip == 0 else -(clip_skip + 1), final_norm=True)
        return Conditioning(self, out.embeds, None, text)

    def embedding_problem(self, denoiser: Denoiser, cond: Conditioning) -> str | None:
        expected = denoiser.module.config.cross_attention_dim
        if cond.embeds.shape[-1] != expected:
            return (f"the prompt embedding is {cond.embeds.shape[-1]} wide but this UNet expects {expected} "
                    f"(text encoder and UNet come from different models)")
        return None

    # ---- denoising -------------------------------------------------------------------------------
    # StableDiffusion(XL)PAGPipeline's processors; diffusers' attention hooks (SEG) take the U-Net's attention
    pag_processors = ("PAGCFGIdentitySelfAttnProcessor2_0", "PAGIdentitySelfAttnProcessor2_0")
    attention_hooks = True

    @staticmethod
    def guidance_embedding(denoiser: Denoiser, scale: float, batch: int):
        """Guidance-distilled (LCM) UNets embed w = scale - 1 like a timestep, as diffusers' pipelines do."""
        dim = denoiser.module.config.time_cond_proj_dim
        if dim is None:
            return None
        w = torch.tensor(scale - 1).repeat(batch) * 1000.0
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
        angles = w.to(torch.float32)[:, None] * freqs[None, :]
        emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
        if dim % 2:
            emb = torch.nn.functional.pad(emb, (0, 1))
        return emb.to(device=denoiser.module.device, dtype=denoiser.dtype)

    def model_inputs(self, denoiser, guider, batch, image_size) -> ModelInputs:
        module = denoiser.module
        negative, positive = same_length(guider.negative.embeds, guider.positive.embeds)
        negative, positive = (repeat_batch(e.to(module.device, module.dtype), batch) for e in (negative, positive))
        timestep_cond = self.guidance_embedding(denoiser, guider.scale, batch)
        cond = {"encoder_hidden_states": positive, "timestep_cond": timestep_cond}
        if timestep_cond is not None:
            return ModelInputs(None, cond)
        return ModelInputs({"encoder_hidden_states": torch.cat([negative, positive]), "timestep_cond": None}, cond,
                           {"encoder_hidden_states": negative, "timestep_cond": None})

    def predict(self, denoiser, model_input, timestep, inputs):
        return denoiser.module(model_input, timestep, **inputs, return_dict=False)[0]

    def control_problem(self, denoiser, controlnet):
        width, expected = controlnet.config.cross_attention_dim, denoiser.module.config.cross_attention_dim
        if width != expected:
            return f"has cross-attention width {width} but this U-Net has {expected} (made for another model)"
        return None

    def control_residuals(self, denoiser, control, controlnet, model_input, timestep, inputs, control_input, scale):
        """As the ControlNet pipelines call it: same latents, timestep and prompt as the U-Net call."""
        extra = {"added_cond_kwargs": inputs["added_cond_kwargs"]} if "added_cond_kwargs" in inputs else {}
        if control.mode is not None:  # union ControlNet: one control type per image
            extra.update(control_type=union_control_type(controlnet, control.mode, model_input.shape[0]),
                         control_type_idx=[control.mode])
            control_input = [control_input]
        down, mid = controlnet(model_input, timestep, encoder_hidden_states=inputs["encoder_hidden_states"],
                               controlnet_cond=control_input, conditioning_scale=scale, guess_mode=False,
                               return_dict=False, **extra)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


STABLE_DIFFUSION = StableDiffusionFamily()
