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
_REFINER_TE2 = "conditioner.embedders.0.model."  # the refiner's only text encoder, OpenCLIP-G


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

    def lora_text_targets(self, text_encoder):
        """The refiner has the second text encoder alone (its LoRA keys are text_encoder_2's)."""
        if len(text_encoder.parts) == 1:
            return [(text_encoder.parts[0].module, "text_encoder_2")]
        return super().lora_text_targets(text_encoder)
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
        """A config-only diffusers folder for an SDXL checkpoint: bundled SDXL configs, sizes from the tensors. The
        refiner (OpenCLIP-G alone, as ``conditioner.embedders.0``) becomes a StableDiffusionXLImg2ImgPipeline
        folder without a first text encoder, with aesthetic-score time ids, as its released model_index says."""
        from ..clip_vocab import build_clip_tokenizer

        base = bundled_config("sdxl")
        refiner = not any(k.startswith(_TE1) for k in shapes)
        scheduler = with_prediction(base["scheduler"], prediction)
        text_2 = infer_text_encoder_config(base["text_encoder_2"], shapes, "open_clip",
                                           _REFINER_TE2 if refiner else _TE2)
        unet = infer_unet_config(base["unet"], shapes, "per64")
        # the text-time embedding takes 6 time ids (the refiner: 5) of addition_time_embed_dim each + the pooled prompt
        pooled = text_2["projection_dim"]
        unet["addition_time_embed_dim"] = (unet["projection_class_embeddings_input_dim"] - pooled) // (
            5 if refiner else 6)
        components = {"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
        if refiner:
            components = {"text_encoder": [None, None], "tokenizer": [None, None]}
        configs = {
            "unet/config.json": unet,
            "vae/config.json": infer_vae_config(base["vae"], shapes),
            "text_encoder_2/config.json": text_2,
            "scheduler/scheduler_config.json": scheduler,
            "model_index.json": {
                "_class_name": "StableDiffusionXLImg2ImgPipeline" if refiner else base["pipeline"],
                "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                "tokenizer_2": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", scheduler["_class_name"]],
                "force_zeros_for_empty_prompt": False if refiner else base["force_zeros_for_empty_prompt"],
                **({"requires_aesthetics_score": True} if refiner else {}), **components,
            },
        }
        tokenizers = {"tokenizer_2": build_clip_tokenizer(text_2["vocab_size"], base["tokenizer_2_pad_token"],
                                                          vocab_dirs)}
        if not refiner:
            text = infer_text_encoder_config(base["text_encoder"], shapes, "clip", _TE1)
            configs["text_encoder/config.json"] = text
            tokenizers["tokenizer"] = build_clip_tokenizer(text["vocab_size"], base["tokenizer_pad_token"], vocab_dirs)
        write_skeleton(directory, configs, tokenizers)

    def load_single_file(self, path, keys, dtype, prediction, vocab_dirs, t5_dirs=()) -> LoadedModel:
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        refiner = not any(k.startswith(_TE1) for k in keys)  # the refiner has OpenCLIP-G alone, as embedders.0
        with tempfile.TemporaryDirectory(prefix="ds-config-") as skeleton:
            self.single_file_skeleton(keys, prediction, vocab_dirs, skeleton)
            pipeline = StableDiffusionXLImg2ImgPipeline if refiner else StableDiffusionXLPipeline
            extra = {"text_encoder": None, "tokenizer": None} if refiner else {}
            pipe = pipeline.from_single_file(path, config=skeleton, local_files_only=True, torch_dtype=dtype, **extra)
        first = () if refiner else (TextPart(pipe.tokenizer, pipe.text_encoder),)
        loaded = assemble(self, pipe.unet, (*first, TextPart(pipe.tokenizer_2, pipe.text_encoder_2)), pipe.vae,
                          dict(pipe.scheduler.config), path)
        return self._with_pipeline_config(loaded, pipe.config)

    def load_folder(self, path: str, dtype: torch.dtype, prediction: str) -> LoadedModel:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
            index = json.load(f)
        first = ()
        if (index.get("text_encoder") or [None])[0]:  # a refiner has none: CLIP-G alone conditions its U-Net
            first = (TextPart(load_tokenizer(path, CLIPTokenizer, "tokenizer"),
                              load_component(path, CLIPTextModel, "text_encoder", dtype)),)
        parts = (*first, TextPart(load_tokenizer(path, CLIPTokenizer, "tokenizer_2"),
                                  load_component(path, CLIPTextModelWithProjection, "text_encoder_2", dtype)))
        loaded = assemble(self, load_component(path, UNet2DConditionModel, "unet", dtype), parts,
                          load_component(path, AutoencoderKL, "vae", dtype), scheduler_config(path, prediction), path)
        return self._with_pipeline_config(loaded, index)

    @staticmethod
    def _with_pipeline_config(loaded: LoadedModel, config) -> LoadedModel:
        """The pipeline's force_zeros_for_empty_prompt (its class default when not saved: True for the base
        pipeline, False for the refiner's Img2Img pipeline) carried on the text encoder."""
        refiner = len(loaded.text_encoder.parts) == 1
        zeros = bool(config.get("force_zeros_for_empty_prompt", not refiner))
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

    @staticmethod
    def time_id_count(denoiser: Denoiser, pooled_width: int) -> int:
        """6 time ids (original size, crop, target size) for the base U-Net, 5 (original size, crop, aesthetic
        score) for the refiner's: what its text-time embedding has room for besides the pooled prompt."""
        module = denoiser.module
        return (module.add_embedding.linear_1.in_features - pooled_width) // module.config.addition_time_embed_dim

    @staticmethod
    def _role(parts: int) -> str:
        return "an SDXL refiner's (CLIP-G only)" if parts == 1 else "an SDXL base model's (CLIP-L + CLIP-G)"

    def embedding_problem(self, denoiser: Denoiser, cond: Conditioning) -> str | None:
        config = denoiser.module.config
        if cond.embeds.shape[-1] != config.cross_attention_dim:
            encoder = cond.text_encoder
            role = f" by {self._role(len(encoder.parts))} text encoder" if encoder is not None else ""
            return (f"the prompt was encoded{role}, {cond.embeds.shape[-1]} wide, but this U-Net takes "
                    f"{config.cross_attention_dim}-wide prompts (a base model and a refiner each need their own "
                    "text encoder)")
        count = self.time_id_count(denoiser, cond.pooled.shape[-1]) if cond.pooled is not None else 0
        if count not in (5, 6) or count * config.addition_time_embed_dim + cond.pooled.shape[-1] != (
                denoiser.module.add_embedding.linear_1.in_features):
            return "the pooled prompt embedding does not fit this UNet (text encoders from another model)"
        if count == 6 and cond.aesthetic_score is not None:
            return "an aesthetic score was set, which only the SDXL refiner takes; this U-Net is an SDXL base model's"
        return None

    # ---- denoising -------------------------------------------------------------------------------
    @staticmethod
    def time_ids(size: tuple[int, ...] | None, image_size: tuple[int, int], dtype,
                 aesthetic_score: float | None = None) -> torch.Tensor:
        """[original h, w, crop top, left, target h, w], or for the refiner [original h, w, crop top, left,
        aesthetic score]; sizes of 0 (or no size at all) mean the generated size."""
        height, width = image_size
        oh, ow, top, left, th, tw = size or (0, 0, 0, 0, 0, 0)
        last = [aesthetic_score] if aesthetic_score is not None else [th or height, tw or width]
        return torch.tensor([[oh or height, ow or width, top, left, *last]], dtype=dtype)

    def model_inputs(self, denoiser, guider, batch, image_size) -> ModelInputs:
        module = denoiser.module
        device, dtype = module.device, module.dtype
        negative, positive = same_length(guider.negative.embeds, guider.positive.embeds)

        refiner = self.time_id_count(denoiser, guider.positive.pooled.shape[-1]) == 5

        def prepared(cond: Conditioning, embeds: torch.Tensor, size, default_score: float):
            score = (default_score if cond.aesthetic_score is None else cond.aesthetic_score) if refiner else None
            time_ids = self.time_ids(size, image_size, dtype, score).to(device)
            return (repeat_batch(embeds.to(device, dtype), batch), repeat_batch(cond.pooled.to(device, dtype), batch),
                    time_ids.repeat(batch, 1))

        # As the pipelines: a negative prompt without size conditioning of its own takes the positive's; the
        # refiner's aesthetic scores default to 6.0 (positive) and 2.5 (negative)
        pos = prepared(guider.positive, positive, guider.positive.size, 6.0)
        neg = prepared(guider.negative, negative, guider.negative.size or guider.positive.size, 2.5)
        cond = {"encoder_hidden_states": pos[0], "added_cond_kwargs": {"text_embeds": pos[1], "time_ids": pos[2]}}
        cfg = {"encoder_hidden_states": torch.cat([neg[0], pos[0]]),
               "added_cond_kwargs": {"text_embeds": torch.cat([neg[1], pos[1]]),
                                     "time_ids": torch.cat([neg[2], pos[2]])}}
        uncond = {"encoder_hidden_states": neg[0], "added_cond_kwargs": {"text_embeds": neg[1], "time_ids": neg[2]}}
        return ModelInputs(cfg, cond, uncond)

    def predict(self, denoiser, model_input, timestep, inputs):
        return denoiser.module(model_input, timestep, **inputs, return_dict=False)[0]


    # the U-Net families call a ControlNet the same way (SDXL's added_cond_kwargs travel with the inputs)
    control_residuals = StableDiffusionFamily.control_residuals
    control_problem = StableDiffusionFamily.control_problem
    attention_hooks = True
    pag_processors = StableDiffusionFamily.pag_processors


STABLE_DIFFUSION_XL = StableDiffusionXLFamily()
