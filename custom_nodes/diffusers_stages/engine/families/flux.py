"""Flux.1 (dev and schnell): a FluxTransformer2DModel, CLIP-L (pooled) + T5 (sequence), a 16-channel VAE.

Latents are packed into 2x2 patches inside the engine only; LATENT stays [B, 16, h, w] as in
core ComfyUI. The schedule is FlowMatchEuler over sigmas linspace(1, 1/N, N) shifted by mu,
which grows with the image's token count (dynamic shifting). The "guidance" value of
guidance-distilled models (dev) is a model input, not CFG; true CFG with a negative prompt is
two transformer calls, positive first, as FluxPipeline does.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import torch

from ..components import Conditioning, Denoiser, TextEncoder, TextPart
from ..errors import InputError
from ..family import Family, LoadedModel, ModelInputs, TextSlot
from . import dit_keys
from .clip_text import encode_clip, repeat_batch
from .dit_files import DitLayout, load_dit_checkpoint
from .folders import assemble, load_component, load_tokenizer, scheduler_config
from .t5_text import encode_t5

DEFAULT_GUIDANCE = 3.5  # FluxPipeline's guidance_scale default
T5_MAX_LENGTH = 512
# the released scheduler configs: dev shifts with the image size, schnell (no guidance embedding) does not shift
SCHEDULER_DEV = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
                 "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                 "max_image_seq_len": 4096}
SCHEDULER_SCHNELL = dict(SCHEDULER_DEV, shift=1.0, use_dynamic_shifting=False)


def calculate_shift(seq_len: int, base_seq: int, max_seq: int, base_shift: float, max_shift: float) -> float:
    slope = (max_shift - base_shift) / (max_seq - base_seq)
    return seq_len * slope + (base_shift - slope * base_seq)


def flow_timesteps(scheduler, steps: int, device, sigmas, mu: float) -> None:
    """A flow pipeline's timesteps: its ``sigmas`` (shifted by ``mu`` when the scheduler shifts dynamically);
    schedulers that take no sigmas (FlowMatchHeun, the multistep solvers in flow mode) make their own schedule."""
    config = scheduler.config
    accepted = inspect.signature(scheduler.set_timesteps).parameters
    if "sigmas" not in accepted or config.get("use_flow_sigmas"):
        dynamic = "mu" in accepted and config.get("use_dynamic_shifting")
        scheduler.set_timesteps(steps, device=device, **({"mu": mu} if dynamic else {}))
        return
    scheduler.set_timesteps(sigmas=sigmas, device=device, **({"mu": mu} if config.get("use_dynamic_shifting") else {}))


def pack(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(latents: torch.Tensor, shape) -> torch.Tensor:
    b, c, h, w = shape
    latents = latents.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(b, c, h, w)


def with_references(model_input: torch.Tensor, inputs: dict) -> tuple[torch.Tensor, dict]:
    """(hidden states, the other keyword arguments) of a call: the reference images' tokens (``reference_tokens``,
    Kontext / Flux.2 editing) after the latents' tokens, as the editing pipelines concatenate them; the model's
    output for them is dropped by the caller (``[:, :model_input.shape[1]]``)."""
    references = inputs.get("reference_tokens")
    if references is None:
        return model_input, inputs
    rest = {key: value for key, value in inputs.items() if key != "reference_tokens"}
    return torch.cat([model_input, references.to(model_input.dtype)], dim=1), rest


def reference_problem(cond: Conditioning, most: int | None) -> str | None:
    """Why these reference images cannot go with this prompt (None if they can)."""
    if most is not None and len(cond.references) > most:
        return f"it carries {len(cond.references)} reference images; this model's pipeline takes {most}"
    if cond.references and cond.controls:
        return "it carries both reference images and a ControlNet, which the editing pipelines do not combine"
    return None


def image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """Row/column position of each packed patch (height, width in patches)."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width)[None, :]
    return ids.reshape(height * width, 3).to(device=device, dtype=dtype)


class FluxFamily(Family):
    id = "flux"
    controlnet_classes = ("FluxControlNetModel",)

    def claims_controlnet(self, class_name, config):
        return class_name == "FluxControlNetModel"

    takes_distilled_guidance = True
    skip_layer_lists = {"": "transformer_blocks", "single": "single_transformer_blocks"}  # double / single stream
    display_name = "Flux.1"
    latent_channels = 16
    spatial_factor = 8
    size_multiple = 16
    pipeline_classes = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxControlNetPipeline",
                        "FluxFillPipeline", "FluxKontextPipeline")
    host_latent_format = "Flux"
    flow_matching = True
    packs_latents = True  # 2x2 patches (to_model_layout)
    begin_index_on_full_run = True
    control_shared_across_cfg_calls = True
    inference_dtypes = ("bf16", "fp16", "fp32")  # Flux overflows in fp16 more easily: bf16 first, as ComfyUI
    latent_scaling = (0.3611, 0.1159)
    takes_reference_images = True  # Flux.1 Kontext (FluxKontextPipeline): one
    lora_pipeline, lora_denoiser = "FluxPipeline", "transformer"
    lora_text_prefixes = ("text_encoder",)  # CLIP-L (diffusers loads no T5 LoRA for Flux)
    text_slots = (TextSlot("clip_l", projection=False), TextSlot("t5", projection=False))

    def unconditional(self, positive, encode_empty):
        """FluxPipeline runs true CFG only with a negative prompt: without one there is no guidance."""
        return None

    dit_layout = DitLayout("FluxTransformer2DModel", "Flux.1 transformer",
                           dit_keys.is_flux, dit_keys.flux_config, dit_keys.flux_rules)

    def file_scheduler(self, module):
        """dev (a guidance embedding) shifts with the image size, schnell does not."""
        return dict(SCHEDULER_DEV if module.config.guidance_embeds else SCHEDULER_SCHNELL)

    # ---- loading -------------------------------------------------------------------------------
    def claims_checkpoint(self, keys) -> bool:
        return (any(".double_blocks." in k or k.startswith("double_blocks.") for k in keys)
                and not dit_keys.is_flux2(keys))

    def load_single_file(self, path, keys, dtype, prediction, vocab_dirs, t5_dirs=()) -> LoadedModel:
        return load_dit_checkpoint(self, path, keys, dtype, vocab_dirs, t5_dirs)

    def load_folder(self, path: str, dtype: torch.dtype, prediction: str) -> LoadedModel:
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

        if not os.path.isdir(os.path.join(path, "text_encoder_2")):
            raise InputError("model", f"'{os.path.basename(path)}' has no T5 text encoder (text_encoder_2); Flux "
                             "cannot run without it.", "use the complete diffusers folder of the model (with "
                             "text_encoder_2 and tokenizer_2).")
        parts = (TextPart(load_tokenizer(path, CLIPTokenizer, "tokenizer"),
                          load_component(path, CLIPTextModel, "text_encoder", dtype)),
                 TextPart(load_tokenizer(path, T5Tokenizer, "tokenizer_2"),
                          load_component(path, T5EncoderModel, "text_encoder_2", dtype)))
        return assemble(self, load_component(path, FluxTransformer2DModel, "transformer", dtype), parts,
                        load_component(path, AutoencoderKL, "vae", dtype), scheduler_config(path), path)

    # ---- conditioning ----------------------------------------------------------------------------
    def encode_prompt(self, text_encoder: TextEncoder, text: str, clip_skip: int, t5_max_length: int = 0):
        if clip_skip:
            raise InputError("clip_skip", "Flux uses the CLIP encoder's pooled output only; clip_skip does not apply.",
                             "set clip_skip to 0.")
        clip, t5 = text_encoder.parts
        pooled = encode_clip(clip, text, None, final_norm=False).pooled
        embeds = encode_t5(t5, text, t5_max_length or T5_MAX_LENGTH)
        return Conditioning(self, embeds, pooled, text)

    def embedding_problem(self, denoiser: Denoiser, cond: Conditioning) -> str | None:
        config = denoiser.module.config
        if cond.embeds.shape[-1] != config.joint_attention_dim or cond.pooled.shape[-1] != config.pooled_projection_dim:
            return "the prompt embeddings do not fit this transformer (text encoders from another model)"
        return None

    # ---- denoising -------------------------------------------------------------------------------
    def latent_channels_of(self, denoiser: Denoiser) -> int:
        if self.is_inpainting_model(denoiser):
            return self.latent_channels
        return denoiser.module.config.in_channels // 4  # the transformer sees 2x2 patches

    @property
    def inpainting_input_channels(self) -> int:
        """Flux.1 Fill: latents, masked image's latents and the mask (one channel per pixel of a latent cell), each
        in 2x2 patches: 4 x (16 + 16 + 64) = 384."""
        return 4 * (2 * self.latent_channels + self.spatial_factor ** 2)

    def inpainting_inputs(self, noise_mask, masked_latents):
        """As FluxFillPipeline: the masked image's latents packed, then the binarised mask at the image size, each
        latent cell's 8x8 pixels as 64 channels, packed; joined along the channels."""
        from ..masks import image_mask

        b, _, h, w = masked_latents.shape
        f = self.spatial_factor
        mask = image_mask(noise_mask, masked_latents.shape, f)[:, 0].to(masked_latents)
        mask = mask.view(b, h, f, w, f).permute(0, 2, 4, 1, 3).reshape(b, f * f, h, w)
        return torch.cat([pack(masked_latents), pack(mask)], dim=-1)

    def set_timesteps(self, scheduler, steps: int, latents: torch.Tensor) -> None:
        config = scheduler.config
        seq_len = (latents.shape[2] // 2) * (latents.shape[3] // 2)
        mu = calculate_shift(seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        flow_timesteps(scheduler, steps, latents.device, np.linspace(1.0, 1 / steps, steps), mu)

    def to_model_layout(self, latents):
        return pack(latents)

    def from_model_layout(self, latents, shape):
        return unpack(latents, shape)

    def model_inputs(self, denoiser, guider, batch, image_size) -> ModelInputs:
        module = denoiser.module
        device, dtype = module.device, module.dtype
        height, width = image_size[0] // 16, image_size[1] // 16
        img_ids = image_ids(height, width, device, dtype)
        guidance_value = guider.positive.guidance if guider.positive.guidance is not None else DEFAULT_GUIDANCE
        guidance = (torch.full([1], guidance_value, device=device, dtype=torch.float32).expand(batch)
                    if module.config.guidance_embeds else None)

        def inputs(cond: Conditioning):
            return {"encoder_hidden_states": repeat_batch(cond.embeds.to(device, dtype), batch),
                    "pooled_projections": repeat_batch(cond.pooled.to(device, dtype), batch),
                    "txt_ids": torch.zeros(cond.embeds.shape[1], 3, device=device, dtype=dtype),
                    "img_ids": img_ids, "guidance": guidance, **self.reference_inputs(denoiser, cond, img_ids, batch)}

        return ModelInputs(cfg=None, cond=inputs(guider.positive), uncond=inputs(guider.negative))

    def reference_inputs(self, denoiser, cond: Conditioning, img_ids: torch.Tensor, batch: int) -> dict:
        """As FluxKontextPipeline: the reference image's latents (2x2 patches) after the latents' tokens,
        at position index 1 (rows and columns counted from 0, as the latents'); the ids of both, in that order."""
        if not cond.references:
            return {}
        problem = reference_problem(cond, most=1)
        if problem:
            raise InputError("guider", f"{problem}.", "give Flux.1 Kontext one reference image (stitch several into "
                             "one picture first), and no ControlNet.")
        module = denoiser.module
        latents = cond.references[0].to(module.device, module.dtype)
        ids = image_ids(latents.shape[2] // 2, latents.shape[3] // 2, module.device, module.dtype)
        ids[..., 0] = 1
        return {"reference_tokens": pack(latents).repeat(batch, 1, 1), "img_ids": torch.cat([img_ids, ids])}

    def prepare_control(self, control, height, width, batch, copies, generator):
        """As FluxControlNetPipeline: the image in -1..1; for InstantX-style ControlNets (no input hint block) its VAE
        posterior is sampled with the run's generator (before the initial noise is drawn), shifted, scaled, packed."""
        from ..control_inputs import control_latents, control_pixels

        net = control.controlnet.module
        pixels = control_pixels(control, height, width, batch, normalize=True)
        if net.input_hint_block is not None:  # XLabs-style: the ControlNet reads pixels itself
            return pixels.to(device=net.device, dtype=net.dtype)
        return pack(control_latents(control, pixels, sample_with=generator))

    def control_residuals(self, denoiser, control, controlnet, model_input, timestep, inputs, control_input, scale):
        batch = model_input.shape[0]
        guidance = None
        if controlnet.config.guidance_embeds:
            guidance = inputs["guidance"]
            if guidance is None:
                guidance = torch.full([1], DEFAULT_GUIDANCE, device=model_input.device).expand(batch)
        mode = None
        if control.mode is not None:
            mode = torch.tensor(control.mode, device=model_input.device, dtype=torch.long).view(-1, 1).expand(batch, 1)
        timestep = timestep.expand(batch).to(model_input.dtype)
        blocks, single_blocks = controlnet(
            hidden_states=model_input, controlnet_cond=control_input, controlnet_mode=mode, conditioning_scale=scale,
            timestep=timestep / 1000, guidance=guidance, pooled_projections=inputs["pooled_projections"],
            encoder_hidden_states=inputs["encoder_hidden_states"], txt_ids=inputs["txt_ids"],
            img_ids=inputs["img_ids"], return_dict=False)
        return {"controlnet_block_samples": blocks, "controlnet_single_block_samples": single_blocks,
                "controlnet_blocks_repeat": controlnet.input_hint_block is not None}

    def predict(self, denoiser, model_input, timestep, inputs):
        timestep = timestep.expand(model_input.shape[0]).to(model_input.dtype)
        hidden_states, inputs = with_references(model_input, inputs)
        output = denoiser.module(hidden_states=hidden_states, timestep=timestep / 1000, **inputs, return_dict=False)[0]
        return output[:, :model_input.shape[1]]


FLUX = FluxFamily()
