"""Stable Diffusion XL: a UNet2DConditionModel with text-time embedding, two CLIP text encoders, a 4-channel VAE.

The prompt embedding is the penultimate hidden state of both encoders, concatenated; the
pooled vector comes from the second (projected) encoder. The UNet also takes "time ids":
original size, crop top-left and target size, each (height, width).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import torch

from ..components import Conditioning, Denoiser, TextEncoder, TextPart
from ..errors import InputError
from ..family import Family, LoadedModel, ModelInputs, TextSlot
from . import controlnet_files
from .bundled_configs import bundled_config, infer_text_encoder_config, infer_unet_config, infer_vae_config
from .clip_text import check_clip_skip, encode_clip, repeat_batch, same_length
from .folders import assemble, load_component, load_tokenizer, scheduler_config, with_prediction
from .stable_diffusion import (
    StableDiffusionFamily,
    has_text_time_embedding,
    is_unet_file,
    unet_from_file,
    write_skeleton,
)

_TE1 = "conditioner.embedders.0.transformer.text_model."
_TE2 = "conditioner.embedders.1.model."


class StableDiffusionXLFamily(Family):
    id = "sdxl"
    controlnet_classes = ("ControlNetModel", "ControlNetUnionModel")

    def claims_controlnet(self, class_name, config):
        return class_name == "ControlNetUnionModel" or (class_name == "ControlNetModel" and
                                                        config.get("addition_embed_type") == "text_time")

    def claims_controlnet_file(self, shapes, name):
        return controlnet_files.controlnet_kind(shapes, name) == "sdxl"

    def controlnet_from_file(self, path, shapes, dtype):
        return controlnet_files.controlnet_from_file(path, shapes, dtype)

    takes_size_conditioning = True
    display_name = "Stable Diffusion XL"
    latent_channels = 4
    spatial_factor = 8
    size_multiple = 8
    pipeline_classes = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                        "StableDiffusionXLInpaintPipeline", "StableDiffusionXLControlNetPipeline")
    host_latent_format = "SDXL"
    lora_pipeline = "StableDiffusionXLPipeline"
    lora_text_prefixes = ("text_encoder", "text_encoder_2")
    latent_scaling = (0.13025, 0.0)
    text_slots = (TextSlot("clip_l", projection=False), TextSlot("clip_g", projection=True))
    begin_index_on_full_run = True

    # ---- loading -------------------------------------------------------------------------------
    def claims_checkpoint(self, keys) -> bool:
        return "model.diffusion_model.label_emb.0.0.weight" in keys and any(
            k.startswith("conditioner.embedders.") for k in keys)

    def claims_denoiser(self, keys) -> bool:
        return is_unet_file(keys) and has_text_time_embedding(keys)

    def denoiser_from_file(self, path, shapes, dtype, input_name):
        """An SDXL U-Net alone: 64-wide heads; the time-id embedding width is SDXL's 256 (a U-Net file does not
        record it; a text encoder whose pooled width does not fit is refused when the denoiser runs)."""
        base = bundled_config("sdxl")
        return unet_from_file(path, shapes, dtype, base["unet"], "per64", input_name), dict(base["scheduler"])

    def single_file_skeleton(self, shapes, prediction: str, vocab_dirs: tuple[str, ...], directory: str) -> None:
        """A config-only diffusers folder for an SDXL checkpoint: bundled SDXL configs, sizes from the tensors."""
        from ..clip_vocab import build_clip_tokenizer

        base = bundled_config("sdxl")
        scheduler = with_prediction(base["scheduler"], prediction)
        text = infer_text_encoder_config(base["text_encoder"], shapes, "clip", _TE1)
        text_2 = infer_text_encoder_config(base["text_encoder_2"], shapes, "open_clip", _TE2)
        unet = infer_unet_config(base["unet"], shapes, "per64")
        # the text-time embedding takes 6 time ids of addition_time_embed_dim each plus the pooled prompt
        pooled = text_2["projection_dim"]
        unet["addition_time_embed_dim"] = (unet["projection_class_embeddings_input_dim"] - pooled) // 6
        configs = {
            "unet/config.json": unet,
            "vae/config.json": infer_vae_config(base["vae"], shapes),
            "text_encoder/config.json": text,
            "text_encoder_2/config.json": text_2,
            "scheduler/scheduler_config.json": scheduler,
            "model_index.json": {
                "_class_name": base["pipeline"], "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", scheduler["_class_name"]],
                "force_zeros_for_empty_prompt": base["force_zeros_for_empty_prompt"],
            },
        }
        tokenizers = {
            "tokenizer": build_clip_tokenizer(text["vocab_size"], base["tokenizer_pad_token"], vocab_dirs),
            "tokenizer_2": build_clip_tokenizer(text_2["vocab_size"], base["tokenizer_2_pad_token"], vocab_dirs),
        }
        write_skeleton(directory, configs, tokenizers)

    def load_single_file(self, path, keys, dtype, prediction, vocab_dirs, t5_dirs=()) -> LoadedModel:
        from diffusers import StableDiffusionXLPipeline

        if not any(k.startswith(_TE1) for k in keys):
            raise InputError("model", f"'{os.path.basename(path)}' has no first text encoder (an SDXL refiner?), "
                             "which this version of the pack does not run.", "load an SDXL base checkpoint.")
        with tempfile.TemporaryDirectory(prefix="ds-config-") as skeleton:
            self.single_file_skeleton(keys, prediction, vocab_dirs, skeleton)
            pipe = StableDiffusionXLPipeline.from_single_file(path, config=skeleton, local_files_only=True,
                                                              torch_dtype=dtype)
        parts = (TextPart(pipe.tokenizer, pipe.text_encoder), TextPart(pipe.tokenizer_2, pipe.text_encoder_2))
        return assemble(self, pipe.unet, parts, pipe.vae, dict(pipe.scheduler.config), path)

    def load_folder(self, path: str, dtype: torch.dtype, prediction: str) -> LoadedModel:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
            index = json.load(f)
        if not (index.get("text_encoder") or [None])[0]:
            raise InputError("model", f"'{os.path.basename(path)}' has no first text encoder (an SDXL refiner?), "
                             "which this version of the pack does not run.", "load an SDXL base model.")
        parts = (TextPart(load_tokenizer(path, CLIPTokenizer, "tokenizer"),
                          load_component(path, CLIPTextModel, "text_encoder", dtype)),
                 TextPart(load_tokenizer(path, CLIPTokenizer, "tokenizer_2"),
                          load_component(path, CLIPTextModelWithProjection, "text_encoder_2", dtype)))
        loaded = assemble(self, load_component(path, UNet2DConditionModel, "unet", dtype), parts,
                          load_component(path, AutoencoderKL, "vae", dtype), scheduler_config(path, prediction), path)
        zeros = bool(index.get("force_zeros_for_empty_prompt", True))  # the pipeline's default when not saved
        return dataclasses.replace(loaded, text_encoder=dataclasses.replace(
            loaded.text_encoder, force_zeros_for_empty_prompt=zeros))

    # ---- conditioning ----------------------------------------------------------------------------
    def unconditional(self, positive, encode_empty):
        """StableDiffusionXLPipeline with negative_prompt None: zeros shaped like the positive prompt's (embeds and
        pooled) when the pipeline's force_zeros_for_empty_prompt is set, else an encoded empty prompt."""
        if positive.text_encoder is not None and not positive.text_encoder.force_zeros_for_empty_prompt:
            return encode_empty()
        return dataclasses.replace(positive, embeds=torch.zeros_like(positive.embeds),
                                   pooled=torch.zeros_like(positive.pooled), text="")

    def encode_prompt(self, text_encoder: TextEncoder, text: str, clip_skip: int, t5_max_length: int = 0):
        for part in text_encoder.parts:
            check_clip_skip(part, clip_skip, reserved=1)
        # SDXL takes the penultimate layer without the final norm; clip_skip k goes k layers further back
        outs = [encode_clip(part, text, -(clip_skip + 2), final_norm=False) for part in text_encoder.parts]
        embeds = torch.cat([out.embeds for out in outs], dim=-1)
        return Conditioning(self, embeds, outs[-1].pooled, text)

    def conditioning_problem(self, denoiser: Denoiser, cond: Conditioning) -> str | None:
        if cond.family is not self:
            return (f"the prompt was encoded by a {cond.family.display_name} text encoder, but the denoiser is "
                    f"{self.display_name}")
        config = denoiser.module.config
        if cond.embeds.shape[-1] != config.cross_attention_dim:
            return (f"the prompt embedding is {cond.embeds.shape[-1]} wide but this UNet expects "
                    f"{config.cross_attention_dim} (text encoders and UNet come from different models)")
        expected = denoiser.module.add_embedding.linear_1.in_features - 6 * config.addition_time_embed_dim
        if cond.pooled is None or cond.pooled.shape[-1] != expected:
            return "the pooled prompt embedding does not fit this UNet (text encoders from another model)"
        return None

    # ---- denoising -------------------------------------------------------------------------------
    @staticmethod
    def time_ids(size: tuple[int, ...] | None, image_size: tuple[int, int], dtype) -> torch.Tensor:
        """[original h, w, crop top, left, target h, w]; sizes of 0 (or no size at all) mean the generated size."""
        height, width = image_size
        oh, ow, top, left, th, tw = size or (0, 0, 0, 0, 0, 0)
        return torch.tensor([[oh or height, ow or width, top, left, th or height, tw or width]], dtype=dtype)

    def model_inputs(self, denoiser, guider, batch, image_size) -> ModelInputs:
        module = denoiser.module
        device, dtype = module.device, module.dtype
        negative, positive = same_length(guider.negative.embeds, guider.positive.embeds)

        def prepared(cond: Conditioning, embeds: torch.Tensor, size):
            time_ids = self.time_ids(size, image_size, dtype).to(device)
            return (repeat_batch(embeds.to(device, dtype), batch), repeat_batch(cond.pooled.to(device, dtype), batch),
                    time_ids.repeat(batch, 1))

        # As the pipeline: a negative prompt without size conditioning of its own takes the positive's.
        pos = prepared(guider.positive, positive, guider.positive.size)
        neg = prepared(guider.negative, negative, guider.negative.size or guider.positive.size)
        cond = {"encoder_hidden_states": pos[0], "added_cond_kwargs": {"text_embeds": pos[1], "time_ids": pos[2]}}
        cfg = {"encoder_hidden_states": torch.cat([neg[0], pos[0]]),
               "added_cond_kwargs": {"text_embeds": torch.cat([neg[1], pos[1]]),
                                     "time_ids": torch.cat([neg[2], pos[2]])}}
        return ModelInputs(cfg, cond)

    def predict(self, denoiser, model_input, timestep, inputs):
        return denoiser.module(model_input, timestep, **inputs, return_dict=False)[0]


    # the U-Net families call a ControlNet the same way (SDXL's added_cond_kwargs travel with the inputs)
    control_residuals = StableDiffusionFamily.control_residuals
    control_problem = StableDiffusionFamily.control_problem


STABLE_DIFFUSION_XL = StableDiffusionXLFamily()
