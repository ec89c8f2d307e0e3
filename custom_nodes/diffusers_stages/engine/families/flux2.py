"""Flux.2 dev and klein (4B / 9B, distilled and base): a Flux2Transformer2DModel, the Flux.2 VAE, and an LLM text
encoder: Mistral 3 Small (dev) or Qwen3 (klein).

As Flux2Pipeline / Flux2KleinPipeline: the prompt is a chat turn padded to 512 tokens (dev: after BFL's system
message; klein: thinking off); the conditioning is the text encoder's hidden states of three layers side by side for
every token, padding included (dev: 10, 20, 30; klein: 9, 18, 27). dev embeds a guidance value (Flux Guidance;
its pipeline's default 4) and runs no CFG. LATENT is core's
``Flux2`` format: the 32-channel VAE latent in 2x2 patches (128 channels at 1/16), normalised by the VAE's
batch-norm statistics (``engine/vae.py``); the transformer takes it flattened to tokens with (t, row, column, l)
position ids. The schedule is sigmas linspace(1, 1/N, N) shifted by the pipeline's empirical mu (from the token
count and the step count). CFG is two calls, positive first, ``neg + cfg (pos - neg)``; without a negative prompt the
pipeline guides away from an empty one. The distilled models are run with cfg 1, as their pipeline ignores
guidance_scale for them.
"""

from __future__ import annotations

import numpy as np
import torch

from ..components import Conditioning, Denoiser, TextEncoder
from ..errors import InputError
from ..family import Family, LoadedModel, ModelInputs, TextSlot
from . import dit_keys
from .dit_files import DitLayout
from .flux import SCHEDULER_DEV, flow_timesteps, reference_problem, with_references
from .folders import load_llm_folder
from .qwen_text import mistral_layers, stacked_layers

MAX_SEQUENCE_LENGTH = 512  # Flux2KleinPipeline's default
TEXT_LAYERS = (9, 18, 27)  # Flux2KleinPipeline's text_encoder_out_layers
MISTRAL_LAYERS = (10, 20, 30)  # Flux2Pipeline's
DEFAULT_GUIDANCE = 4.0  # Flux2Pipeline's guidance_scale default
SCHEDULER = SCHEDULER_DEV  # the released Flux.2 folders ship Flux.1-dev's scheduler config (its mu is computed)


def positions(t: int, rows: int, columns: int, length: int, batch: int, device) -> torch.Tensor:
    """Position ids (t, row, column, l) of a grid of tokens, row-major, as the Flux.2 pipelines make them."""
    ids = torch.cartesian_prod(torch.arange(t, t + 1), torch.arange(rows), torch.arange(columns), torch.arange(length))
    return ids.unsqueeze(0).expand(batch, -1, -1).to(device)


class Flux2Family(Family):
    id = "flux2"
    display_name = "Flux.2"
    latent_channels = 128
    spatial_factor = 16
    size_multiple = 16
    pipeline_classes = ("Flux2Pipeline", "Flux2KleinPipeline", "Flux2KleinInpaintPipeline")
    takes_distilled_guidance = True  # dev's guidance embedding (klein has none)
    host_latent_format = "Flux2"
    flow_matching = True
    packs_latents = True  # the latent grid flattened to tokens
    begin_index_on_full_run = True
    takes_reference_images = True  # any number, as Flux2Pipeline / Flux2KleinPipeline take a list
    mask_resize = "bilinear"  # Flux2KleinInpaintPipeline: straight to the packed size, bilinear (soft edges)
    inference_dtypes = ("bf16", "fp16", "fp32")
    skip_layer_lists = {"": "transformer_blocks", "single": "single_transformer_blocks"}
    lora_pipeline, lora_denoiser = "Flux2KleinPipeline", "transformer"  # Flux2LoraLoaderMixin: the transformer
    text_slots = (TextSlot("flux2_llm", projection=False),)  # klein's Qwen3 or dev's Mistral 3, by the file

    @staticmethod
    def vae_latent_scaling(vae):
        return 1.0, 0.0  # LATENT is already normalised (by the VAE's batch norm)

    dit_layout = DitLayout("Flux2Transformer2DModel", "Flux.2 transformer",
                           dit_keys.is_flux2, dit_keys.flux2_config, dit_keys.flux2_rules)
    file_scheduler_config = SCHEDULER

    # ---- loading -------------------------------------------------------------------------------
    def claims_checkpoint(self, keys) -> bool:
        return False  # split files and folders only

    def load_folder(self, path: str, dtype: torch.dtype, prediction: str) -> LoadedModel:
        from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
        from transformers import AutoModel

        return load_llm_folder(self, path, dtype, Flux2Transformer2DModel, AutoModel, AutoencoderKLFlux2)

    # ---- conditioning ----------------------------------------------------------------------------
    def encode_prompt(self, text_encoder: TextEncoder, text: str, clip_skip: int, t5_max_length: int = 0):
        if clip_skip:
            raise InputError("clip_skip", "Flux.2 reads fixed layers of its LLM text encoder; clip_skip does not "
                             "apply.", "set clip_skip to 0.")
        part = text_encoder.parts[0]
        length = t5_max_length or MAX_SEQUENCE_LENGTH
        if "Mistral" in type(part.module).__name__:  # dev
            from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

            embeds = mistral_layers(part, text, length, MISTRAL_LAYERS, SYSTEM_MESSAGE)
        else:
            embeds = stacked_layers(part, text, length, TEXT_LAYERS)
        return Conditioning(self, embeds.to(part.module.dtype), None, text)

    text_width_hint = ("the text encoder of another Flux.2 model: dev takes Mistral 3 Small, klein 4B Qwen3 4B, "
                       "klein 9B Qwen3 8B")

    # ---- denoising -------------------------------------------------------------------------------
    def latent_channels_of(self, denoiser: Denoiser) -> int:
        return denoiser.module.config.in_channels

    def set_timesteps(self, scheduler, steps: int, latents: torch.Tensor) -> None:
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        mu = compute_empirical_mu(image_seq_len=latents.shape[2] * latents.shape[3], num_steps=steps)
        flow_timesteps(scheduler, steps, latents.device, np.linspace(1.0, 1 / steps, steps), mu)

    def to_model_layout(self, latents):
        b, c, h, w = latents.shape
        return latents.reshape(b, c, h * w).permute(0, 2, 1)

    def from_model_layout(self, latents, shape):
        b, c, h, w = shape
        return latents.permute(0, 2, 1).reshape(b, c, h, w)

    def model_inputs(self, denoiser, guider, batch, image_size) -> ModelInputs:
        module = denoiser.module
        device, dtype = module.device, module.dtype
        img_ids = positions(0, image_size[0] // 16, image_size[1] // 16, 1, batch, device)
        guidance = None
        if module.config.guidance_embeds:
            value = guider.positive.guidance if guider.positive.guidance is not None else DEFAULT_GUIDANCE
            guidance = torch.full([batch], value, device=device, dtype=torch.float32)

        def inputs(cond: Conditioning):
            embeds = cond.embeds.to(device, dtype).repeat(batch, 1, 1)
            return {"encoder_hidden_states": embeds, "txt_ids": positions(0, 1, 1, embeds.shape[1], batch, device),
                    "img_ids": img_ids, "guidance": guidance, **self.reference_inputs(denoiser, cond, img_ids, batch)}

        return ModelInputs(cfg=None, cond=inputs(guider.positive), uncond=inputs(guider.negative))

    def reference_inputs(self, denoiser, cond: Conditioning, img_ids: torch.Tensor, batch: int) -> dict:
        """As the Flux.2 pipelines: each reference image's latents (LATENT is already the model's space) flattened to
        tokens after the latents' and each other's, at time coordinate 10, 20, 30, …; the ids of all, in order."""
        if not cond.references:
            return {}
        problem = reference_problem(cond, most=None)
        if problem:
            raise InputError("guider", f"{problem}.", "remove the ControlNet or the Reference Image node.")
        module = denoiser.module
        tokens, ids = [], [img_ids]
        for index, reference in enumerate(cond.references):
            latents = reference.to(module.device, module.dtype)
            tokens.append(self.to_model_layout(latents))
            ids.append(positions(10 + 10 * index, latents.shape[2], latents.shape[3], 1, batch, module.device))
        return {"reference_tokens": torch.cat(tokens, dim=1).repeat(batch, 1, 1), "img_ids": torch.cat(ids, dim=1)}

    def predict(self, denoiser, model_input, timestep, inputs):
        module = denoiser.module
        timestep = timestep.expand(model_input.shape[0]).to(model_input.dtype)
        hidden_states, inputs = with_references(model_input.to(module.dtype), inputs)
        output = module(hidden_states=hidden_states, timestep=timestep / 1000, **inputs, return_dict=False)[0]
        return output[:, :model_input.shape[1]]


FLUX2 = Flux2Family()
