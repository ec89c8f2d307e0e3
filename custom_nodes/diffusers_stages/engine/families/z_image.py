"""Z-Image (Turbo and base): a ZImageTransformer2DModel, a Qwen3 text encoder, the Flux.1 VAE.

As ZImagePipeline: the prompt goes through the tokenizer's chat template (a user turn, then the assistant's turn
opened, thinking on), is padded to max_sequence_length, and the text encoder's penultimate hidden states of the
real (unpadded) tokens are the conditioning, one sequence per prompt of its own length. The transformer takes lists
(one latent [C, 1, h, w] and one caption sequence per image), the time as (1000 - t) / 1000, and predicts the
negated flow. CFG is one batched call [positive, negative] combined as ``pos + g (pos - neg)`` with the pipeline's
guidance_scale ``g`` = our cfg - 1 (so cfg keeps ComfyUI's meaning: 1 = no CFG). Latents are Flux.1's (16
channels at 1/8, not packed: the transformer patches them itself); LATENT is core's ``Flux`` format.
"""

from __future__ import annotations

import torch

from ..components import Conditioning, TextEncoder
from ..errors import InputError
from ..family import Family, LoadedModel, ModelInputs, TextSlot
from . import dit_keys
from .dit_files import load_dit
from .folders import load_llm_folder
from .qwen_text import encode_chat_prompt

MAX_SEQUENCE_LENGTH = 512  # ZImagePipeline's default
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
             "use_dynamic_shifting": False}  # Z-Image-Turbo's scheduler_config.json


def repeated(embeds: torch.Tensor, batch: int, device, dtype) -> list[torch.Tensor]:
    sequence = embeds[0].to(device=device, dtype=dtype)
    return [sequence] * batch


class ZImageFamily(Family):
    id = "zimage"
    display_name = "Z-Image"
    latent_channels = 16
    spatial_factor = 8
    size_multiple = 16  # 8 px per latent cell x 2x2 transformer patches
    pipeline_classes = ("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline",
                        "ZImageControlNetPipeline", "ZImageControlNetInpaintPipeline")
    host_latent_format = "Flux"  # core's Lumina2 / Z-Image models use Flux.1's latent format
    flow_matching = True
    begin_index_on_full_run = True
    inference_dtypes = ("bf16", "fp16", "fp32")
    latents_dtype = torch.float32  # ZImagePipeline keeps noise and steps in float32 whatever the model's precision
    latent_scaling = (0.3611, 0.1159)  # the Flux.1 VAE
    skip_layer_lists = {"": "layers"}  # the main transformer blocks (diffusers registers ZImageTransformerBlock)
    cfg_halves = ("positive", "negative")  # ZImagePipeline batches prompt_embeds + negative_prompt_embeds
    lora_pipeline, lora_denoiser = "ZImagePipeline", "transformer"  # ZImageLoraLoaderMixin: the transformer only
    text_slots = (TextSlot("qwen3", projection=False),)

    @staticmethod
    def combine_cfg(cond, uncond, scale):
        """ZImagePipeline's CFG: pos + g (pos - neg), g = its guidance_scale = cfg - 1."""
        return cond + (scale - 1.0) * (cond - uncond)

    # ---- loading -------------------------------------------------------------------------------
    def claims_checkpoint(self, keys) -> bool:
        return False  # no single-file Z-Image checkpoints are in use; split files come through the loaders

    def claims_denoiser(self, keys) -> bool:
        return dit_keys.is_z_image(keys)

    def denoiser_from_file(self, path, shapes, dtype, input_name):
        """The original (Tongyi-MAI / ComfyUI) layout: fused q/k/v, x_embedder/final_layer without patch keys."""
        from diffusers import ZImageTransformer2DModel

        module = load_dit(path, shapes, dtype, ZImageTransformer2DModel, dit_keys.z_image_config,
                          dit_keys.z_image_rules, "Z-Image transformer", input_name)
        return module, dict(SCHEDULER)

    def load_folder(self, path: str, dtype: torch.dtype, prediction: str) -> LoadedModel:
        from diffusers import AutoencoderKL, ZImageTransformer2DModel
        from transformers import AutoModel

        return load_llm_folder(self, path, dtype, ZImageTransformer2DModel, AutoModel, AutoencoderKL)

    # ---- conditioning ----------------------------------------------------------------------------
    def encode_prompt(self, text_encoder: TextEncoder, text: str, clip_skip: int, t5_max_length: int = 0):
        if clip_skip:
            raise InputError("clip_skip", "Z-Image's text encoder is an LLM whose penultimate layer is always used; "
                             "clip_skip does not apply.", "set clip_skip to 0.")
        embeds = encode_chat_prompt(text_encoder.parts[0], text, t5_max_length or MAX_SEQUENCE_LENGTH)
        return Conditioning(self, embeds, None, text)

    text_width_field = "cap_feat_dim"

    # ---- denoising -------------------------------------------------------------------------------
    def set_timesteps(self, scheduler, steps: int, latents: torch.Tensor) -> None:
        """ZImagePipeline's schedule: sigmas linspace(1, 1/N, N) in float32, mu from the token count (used only by
        schedulers with dynamic shifting)."""
        from .flux import calculate_shift, flow_timesteps

        config = scheduler.config
        seq_len = (latents.shape[2] // 2) * (latents.shape[3] // 2)
        mu = calculate_shift(seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        flow_timesteps(scheduler, steps, latents.device, torch.linspace(1.0, 1 / steps, steps).tolist(), mu)

    def model_inputs(self, denoiser, guider, batch, image_size) -> ModelInputs:
        module = denoiser.module
        positive = repeated(guider.positive.embeds, batch, module.device, module.dtype)
        negative = repeated(guider.negative.embeds, batch, module.device, module.dtype)
        return ModelInputs(cfg={"cap_feats": positive + negative}, cond={"cap_feats": positive},
                           uncond={"cap_feats": negative})

    def batched_inputs(self, parts):
        return {"cap_feats": [sequence for part in parts for sequence in part["cap_feats"]]}

    def predict(self, denoiser, model_input, timestep, inputs):
        """The pipeline's call: one [C, 1, h, w] latent per image, time (1000 - t) / 1000; its outputs as float,
        negated (the transformer predicts noise minus image, the scheduler steps along image minus noise)."""
        module = denoiser.module
        time = (1000 - timestep.expand(model_input.shape[0])) / 1000
        latents = list(model_input.to(module.dtype).unsqueeze(2).unbind(dim=0))
        out = module(latents, time, inputs["cap_feats"], return_dict=False)[0]
        return -torch.stack([prediction.float() for prediction in out], dim=0).squeeze(2)


Z_IMAGE = ZImageFamily()
