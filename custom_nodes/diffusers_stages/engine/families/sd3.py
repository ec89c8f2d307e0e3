"""Stable Diffusion 3 / 3.5: an SD3Transformer2DModel, CLIP-L + CLIP-G (+ optional T5), a 16-channel VAE.

The prompt sequence is the two CLIPs' penultimate hidden states side by side, zero-padded to the
T5 width, followed by the T5 sequence (zeros when the T5 encoder is left out). The pooled vector
is both CLIPs' projected outputs side by side. Flow matching with a shifted schedule; CFG is
batched [uncond, cond]; skip-layer guidance (SD3.5) adds one more call without some layers.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

from ..components import Conditioning, Denoiser, TextEncoder, TextPart
from ..family import Family, LoadedModel, ModelInputs, TextSlot
from . import dit_keys
from .clip_text import check_clip_skip, encode_clip, repeat_batch, same_length
from .dit_files import DitLayout, load_dit_checkpoint
from .flux import calculate_shift
from .folders import assemble, load_component, load_tokenizer, scheduler_config
from .t5_text import encode_t5

T5_MAX_LENGTH = 256  # StableDiffusion3Pipeline's max_sequence_length default
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}  # SD3/3.5


class StableDiffusion3Family(Family):
    id = "sd3"
    controlnet_classes = ("SD3ControlNetModel",)

    def claims_controlnet(self, class_name, config):
        return class_name == "SD3ControlNetModel"

    display_name = "Stable Diffusion 3"
    latent_channels = 16
    spatial_factor = 8
    size_multiple = 16  # 8 px per latent cell x 2x2 transformer patches
    pipeline_classes = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                        "StableDiffusion3InpaintPipeline", "StableDiffusion3ControlNetPipeline")
    host_latent_format = "SD3"
    flow_matching = True
    supports_skip_layers = True
    pag_processors = ("PAGCFGJointAttnProcessor2_0", "PAGJointAttnProcessor2_0")  # StableDiffusion3PAGPipeline

    @staticmethod
    def takes_pag_processor(attention) -> bool:
        """The joint (image + text) attention only: SD3.5's extra image self-attention (``attn2`` of its
        dual-attention blocks) gets no text stream, on which diffusers' joint PAG processors fail (so does
        StableDiffusion3PAGPipeline when a pattern selects it)."""
        return attention.add_k_proj is not None
    latent_scaling = (1.5305, 0.0609)
    lora_pipeline, lora_denoiser = "StableDiffusion3Pipeline", "transformer"
    lora_text_prefixes = ("text_encoder", "text_encoder_2")  # the two CLIPs (diffusers loads no T5 LoRA for SD3)
    text_slots = (TextSlot("clip_l", projection=True), TextSlot("clip_g", projection=True),
                  TextSlot("t5", projection=False, required=False))

    dit_layout = DitLayout("SD3Transformer2DModel", "SD3 transformer (MMDiT)",
                           dit_keys.is_sd3, dit_keys.sd3_config, dit_keys.sd3_rules)
    file_scheduler_config = SCHEDULER

    # ---- loading -------------------------------------------------------------------------------
    def claims_checkpoint(self, keys) -> bool:
        return any(".joint_blocks." in k or k.startswith("joint_blocks.") for k in keys)

    def load_single_file(self, path, keys, dtype, prediction, vocab_dirs, t5_dirs=()) -> LoadedModel:
        return load_dit_checkpoint(self, path, keys, dtype, vocab_dirs, t5_dirs)

    def load_folder(self, path: str, dtype: torch.dtype, prediction: str) -> LoadedModel:
        from diffusers import AutoencoderKL, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5Tokenizer

        with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
            index = json.load(f)
        parts = [TextPart(load_tokenizer(path, CLIPTokenizer, f"tokenizer{suffix}"),
                          load_component(path, CLIPTextModelWithProjection, f"text_encoder{suffix}", dtype))
                 for suffix in ("", "_2")]
        has_t5 = (index.get("text_encoder_3") or [None])[0] and os.path.isdir(os.path.join(path, "text_encoder_3"))
        if has_t5:  # optional: SD3 runs without T5 (zeros in its place), as diffusers allows
            parts.append(TextPart(load_tokenizer(path, T5Tokenizer, "tokenizer_3"),
                                  load_component(path, T5EncoderModel, "text_encoder_3", dtype)))
        return assemble(self, load_component(path, SD3Transformer2DModel, "transformer", dtype), tuple(parts),
                        load_component(path, AutoencoderKL, "vae", dtype), scheduler_config(path), path)

    # ---- conditioning ----------------------------------------------------------------------------
    def encode_prompt(self, text_encoder: TextEncoder, text: str, clip_skip: int, t5_max_length: int = 0):
        clip_l, clip_g, *t5 = text_encoder.parts
        for part in (clip_l, clip_g):
            check_clip_skip(part, clip_skip, reserved=1)
        outs = [encode_clip(part, text, -(clip_skip + 2), final_norm=False) for part in (clip_l, clip_g)]
        clip_embeds = torch.cat([out.embeds for out in outs], dim=-1)
        pooled = torch.cat([out.pooled for out in outs], dim=-1)
        length = t5_max_length or T5_MAX_LENGTH
        if t5:
            t5_embeds = encode_t5(t5[0], text, length)
        else:  # no T5: the pipeline puts zeros of the transformer's joint width in its place
            t5_embeds = None
        return Conditioning(self, clip_embeds, pooled, text,
                            t5=t5_embeds, t5_length=length)

    def embedding_problem(self, denoiser: Denoiser, cond: Conditioning) -> str | None:
        config = denoiser.module.config
        width = config.joint_attention_dim
        if cond.t5 is not None and cond.t5.shape[-1] != width:
            return f"the T5 embedding is {cond.t5.shape[-1]} wide but this transformer expects {width}"
        if cond.embeds.shape[-1] > width or cond.pooled.shape[-1] != config.pooled_projection_dim:
            return "the CLIP embeddings do not fit this transformer (text encoders from another model)"
        return None

    def sequence(self, denoiser: Denoiser, cond: Conditioning, clip_embeds: torch.Tensor) -> torch.Tensor:
        """CLIP embeddings zero-padded to the joint width, then the T5 sequence (or zeros)."""
        width = denoiser.module.config.joint_attention_dim
        t5 = cond.t5 if cond.t5 is not None else torch.zeros(1, cond.t5_length, width, dtype=clip_embeds.dtype,
                                                             device=clip_embeds.device)
        padded = F.pad(clip_embeds, (0, width - clip_embeds.shape[-1]))
        return torch.cat([padded, t5.to(padded.device, padded.dtype)], dim=-2)

    # ---- denoising -------------------------------------------------------------------------------
    def set_timesteps(self, scheduler, steps: int, latents: torch.Tensor) -> None:
        config = scheduler.config
        if not config.get("use_dynamic_shifting"):
            scheduler.set_timesteps(steps, device=latents.device)
            return
        patch = 2
        seq_len = (latents.shape[2] // patch) * (latents.shape[3] // patch)
        mu = calculate_shift(seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.16))
        scheduler.set_timesteps(steps, device=latents.device, mu=mu)

    def model_inputs(self, denoiser, guider, batch, image_size) -> ModelInputs:
        module = denoiser.module
        device, dtype = module.device, module.dtype
        neg_clip, pos_clip = same_length(guider.negative.embeds, guider.positive.embeds)
        negative = self.sequence(denoiser, guider.negative, neg_clip.to(device, dtype))
        positive = self.sequence(denoiser, guider.positive, pos_clip.to(device, dtype))
        negative, positive = same_length(negative, positive)
        neg_seq, pos_seq = repeat_batch(negative, batch), repeat_batch(positive, batch)
        neg_pool, pos_pool = (repeat_batch(c.pooled.to(device, dtype), batch) for c in (guider.negative,
                                                                                         guider.positive))
        cond = {"encoder_hidden_states": pos_seq, "pooled_projections": pos_pool}
        cfg = {"encoder_hidden_states": torch.cat([neg_seq, pos_seq]),
               "pooled_projections": torch.cat([neg_pool, pos_pool])}
        uncond = {"encoder_hidden_states": neg_seq, "pooled_projections": neg_pool}
        skip = dict(cond, skip_layers=list(guider.skip_layers)) if guider.skip_layers else None
        return ModelInputs(cfg, cond, uncond, skip=skip)

    def prepare_control(self, control, height, width, batch, copies, generator):
        """The control image as SD3ControlNetPipeline prepares it: -1..1, encoded by the VAE (the [uncond, cond]
        batch when CFG is batched), shifted (unless the ControlNet zeroes the pooled prompt, as InstantX's) and
        scaled. The pipeline samples the posterior from torch's global generator, which no seed reaches; this takes
        its mode, as VAE Encode does, so a seed gives one image."""
        from ..control_inputs import control_latents, control_pixels

        pixels = control_pixels(control, height, width, batch, normalize=True)
        zero_shift = control.controlnet.module.config.force_zeros_for_pooled_projection
        return control_latents(control, torch.cat([pixels] * copies), shift=0.0 if zero_shift else None)

    def control_residuals(self, denoiser, control, controlnet, model_input, timestep, inputs, control_input, scale):
        config = controlnet.config
        pooled = inputs["pooled_projections"]
        samples = controlnet(
            hidden_states=model_input, timestep=timestep.expand(model_input.shape[0]),
            encoder_hidden_states=inputs["encoder_hidden_states"] if config.joint_attention_dim is not None else None,
            pooled_projections=torch.zeros_like(pooled) if config.force_zeros_for_pooled_projection else pooled,
            controlnet_cond=control_input, conditioning_scale=scale, return_dict=False)[0]
        return {"block_controlnet_hidden_states": samples}

    def predict(self, denoiser, model_input, timestep, inputs):
        timestep = timestep.expand(model_input.shape[0])
        return denoiser.module(hidden_states=model_input, timestep=timestep, **inputs, return_dict=False)[0]


STABLE_DIFFUSION_3 = StableDiffusion3Family()
