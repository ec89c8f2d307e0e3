"""The family interface: what every family adapter declares and implements, and the types it returns.

A family adapter knows how to load its models (diffusers folder, single file, component files), how to turn
a prompt into conditioning, how to call its denoiser for one step, its latent layout, its preview colours and
its capabilities (size conditioning, distilled guidance, ControlNets it runs, …). The denoise loop, the
loaders and the nodes ask the adapter and never branch on the family themselves. This module sits at the
bottom of the engine: adapters import it, it imports no adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import torch

    from .components import Conditioning, Denoiser, Guider, SchedulerSpec, TextEncoder, Vae


@dataclass(frozen=True)
class ModelInputs:
    """Per-run keyword arguments for ``Family.predict``.

    ``cond``: the positive prompt alone. ``cfg``: one batched [uncond, cond] call (SD, SDXL, SD3: how their
    pipelines run CFG). ``uncond``: the negative prompt alone, for CFG as two calls, cond first (Flux true CFG;
    diffusers' guiders as its modular pipelines run them). Neither: the model takes no CFG (guidance-distilled).
    """

    cfg: dict[str, Any] | None
    cond: dict[str, Any]
    uncond: dict[str, Any] | None = None
    skip: dict[str, Any] | None = None  # positive prompt with some layers skipped (skip-layer guidance)


@dataclass(frozen=True)
class LoadedModel:
    denoiser: Denoiser
    text_encoder: TextEncoder
    vae: Vae
    scheduler: SchedulerSpec


class Family:
    """Interface of a family adapter. Subclasses fill in every method."""

    id: str
    display_name: str
    latent_channels: int
    spatial_factor: int  # pixels per latent cell
    size_multiple: int  # width/height must be multiples of this
    pipeline_classes: tuple[str, ...]  # model_index.json `_class_name` values this family loads
    supports_skip_layers = False  # skip-layer guidance as the family's own pipeline runs it (SD3)
    # skip-layer guidance through diffusers' SkipLayerGuidance: the transformer-block lists its layer numbers index,
    # by the prefix a layer is written with ("" for plain numbers; Flux: "single" for "single.N")
    skip_layer_lists: dict[str, str] = {}
    packs_latents = False  # the denoiser works on packed patches, not on the latent image grid (Flux)
    flow_matching = False  # the denoiser predicts flow (velocity) and takes flow-matching schedulers (SD3, Flux)
    takes_size_conditioning = False  # micro-conditioning on original size, crop and target size (SDXL)
    takes_distilled_guidance = False  # a guidance value embedded into the denoiser (Flux dev)
    host_latent_format: str = ""  # the host's previewer for this latent layout (ComfyUI: comfy.latent_formats.<name>)
    begin_index_on_full_run = False  # the family's pipeline calls scheduler.set_begin_index(0) for text-to-image
    # reference images (Reference Image node) as extra tokens after the latents' (Flux.1 Kontext, Flux.2)
    takes_reference_images = False
    mask_resize = "nearest"  # how its inpaint pipeline brings the binarised mask to the latent size (F.interpolate)
    inference_dtypes: tuple[str, ...] = ("fp16", "bf16", "fp32")  # preferred first, for dtype "auto" on a GPU
    # the precision of the latents between steps (noise, scheduler steps); None: the denoiser's, as most pipelines
    latents_dtype = None
    latent_scaling: tuple[float, float] = (1.0, 0.0)  # the family's VAE scaling/shift, for a denoiser loaded alone

    @staticmethod
    def vae_latent_scaling(vae) -> tuple[Any, Any]:
        """(scale, shift) from the model's VAE config, as its pipeline scales latents: (raw - shift) * scale."""
        return vae.config.scaling_factor, vae.config.shift_factor or 0.0
    text_slots: tuple = ()  # the TextSlots (component_files) a text encoder of this family is made of, in order
    lora_pipeline: str = ""  # the diffusers pipeline whose LoRA loader reads this family's LoRAs ("" = none yet)
    lora_denoiser = "unet"  # the denoiser's key prefix in LoRA files (U-Net: "unet", DiT: "transformer")
    lora_text_prefixes: tuple[str, ...] = ()  # its text encoders' key prefixes in LoRA files, in part order

    def lora_text_targets(self, text_encoder: TextEncoder) -> list[tuple[Any, str]]:
        """(text encoder module, its key prefix in LoRA files) for each part that takes LoRA weights."""
        return list(zip(text_encoder.modules, self.lora_text_prefixes))

    def claims_checkpoint(self, keys: set[str]) -> bool:
        raise NotImplementedError

    def load_folder(self, path: str, dtype: torch.dtype, prediction: str) -> LoadedModel:
        raise NotImplementedError

    # how the family's transformer files are laid out (families/dit_files.DitLayout), for DiT families
    dit_layout = None
    file_scheduler_config: dict[str, Any] = {}  # the scheduler a denoiser loaded from a file gets

    def claims_denoiser(self, keys) -> bool:
        """A diffusion-model file (models/diffusion_models) of this family."""
        return self.dit_layout is not None and self.dit_layout.claims(keys)

    def denoiser_from_file(self, path: str, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                           input_name: str) -> tuple[Any, dict[str, Any]]:
        """(denoiser module, the family's default scheduler config) from a diffusion-model file."""
        module = self.dit_layout.load(path, shapes, dtype, input_name)
        return module, self.file_scheduler(module)

    def file_scheduler(self, module) -> dict[str, Any]:
        """The scheduler config for a denoiser loaded from a file (no scheduler_config.json beside it)."""
        return dict(self.file_scheduler_config)

    def load_single_file(self, path: str, keys: dict[str, tuple[int, ...]], dtype: torch.dtype, prediction: str,
                         vocab_dirs: tuple[str, ...], t5_dirs: Iterable[str] = ()) -> LoadedModel:
        raise NotImplementedError

    def encode_prompt(self, text_encoder: TextEncoder, text: str, clip_skip: int,
                      t5_max_length: int = 0) -> Conditioning:
        """``t5_max_length``: tokens of the T5 sequence for families with a T5 encoder (0 = the pipeline default)."""
        raise NotImplementedError

    def unconditional(self, positive: Conditioning, encode_empty: Callable[[], Conditioning]) -> Conditioning | None:
        """The negative the family's pipeline guides away from when it is given none: an encoded empty prompt
        (``encode_empty()``), zeros (SDXL's ``force_zeros_for_empty_prompt``), or None for no guidance at all."""
        return encode_empty()

    attention_hooks = False  # diffusers' attention hooks (its SEG guider's) take the denoiser's self-attention

    cfg_halves = ("negative", "positive")  # the order in which the family's pipeline batches CFG's two prompts

    @staticmethod
    def combine_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance as the family's pipeline computes it (``scale``: the CFG Guider's cfg, where 1
        means the positive prediction alone)."""
        return uncond + scale * (cond - uncond)

    # diffusers' PAG attention processors its PAG pipeline sets: (for a batch with CFG's halves, without them)
    pag_processors: tuple[str, str] | tuple[()] = ()

    def takes_pag_processor(self, attention) -> bool:
        """This self-attention layer can take the family's PAG processors."""
        return True

    def batched_inputs(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """One call's keyword arguments for several prompts' inputs batched in order (PAG's [negative, positive,
        positive]): tensors concatenated along the batch, as the pipelines concatenate them."""
        import torch

        def joined(values):
            first = values[0]
            if isinstance(first, dict):
                return {key: joined([value[key] for value in values]) for key in first}
            return torch.cat(values) if isinstance(first, torch.Tensor) else first
        return joined(parts)

    def conditioning_problem(self, denoiser: Denoiser, cond: Conditioning) -> str | None:
        """Why ``cond`` cannot drive ``denoiser`` (None if it can): a prompt of another family, then
        ``embedding_problem``."""
        if cond.family is not self:
            return (f"the prompt was encoded by a {cond.family.display_name} text encoder, but the denoiser is "
                    f"{self.display_name}")
        return self.embedding_problem(denoiser, cond)

    # the denoiser config field giving the width of the prompt embedding it takes, and what a wrong width means
    text_width_field = "joint_attention_dim"
    text_width_hint = "a text encoder of another model"

    def embedding_problem(self, denoiser: Denoiser, cond: Conditioning) -> str | None:
        """Why this family's prompt does not fit this denoiser (None if it does); default: the embedding's width."""
        expected = denoiser.module.config[self.text_width_field]
        if cond.embeds.shape[-1] != expected:
            return (f"the prompt embedding is {cond.embeds.shape[-1]} wide but this {type(denoiser.module).__name__} "
                    f"expects {expected} ({self.text_width_hint})")
        return None

    def model_inputs(self, denoiser: Denoiser, guider: Guider, batch: int, image_size: tuple[int, int]) -> ModelInputs:
        """Everything besides latents and timestep the denoiser needs, for a batch of ``batch`` images of
        ``image_size`` (height, width) pixels."""
        raise NotImplementedError

    def predict(self, denoiser: Denoiser, model_input: torch.Tensor, timestep: Any, inputs: dict[str, Any]):
        raise NotImplementedError

    control_shared_across_cfg_calls = False  # two-call CFG reuses the positive call's ControlNet residuals (Flux)

    def prepare_control(self, control, height: int, width: int, batch: int, copies: int,
                        generator: torch.Generator) -> torch.Tensor:
        """A control's input for this family's ControlNets, as its ControlNet pipeline prepares it (``copies``
        batches side by side when CFG is batched). Default: the control image in 0..1 (U-Net ControlNets)."""
        import torch

        from .control_inputs import control_pixels

        module = control.controlnet.module
        pixels = control_pixels(control, height, width, batch, normalize=False)
        return torch.cat([pixels] * copies).to(device=module.device, dtype=module.dtype)

    controlnet_classes: tuple[str, ...] = ()  # diffusers ControlNet classes this family runs (folders)

    def claims_controlnet(self, class_name: str, config: dict[str, Any]) -> bool:
        """A diffusers ControlNet folder (its config.json) made for this family."""
        return False

    def claims_controlnet_file(self, shapes: dict[str, tuple[int, ...]], name: str) -> bool:
        """A single-file ControlNet made for this family (refusing files that are no ControlNet at all)."""
        return False

    def controlnet_from_file(self, path: str, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype):
        raise NotImplementedError

    def control_problem(self, denoiser: Denoiser, controlnet) -> str | None:
        """Why this ControlNet (of the right family) cannot steer this denoiser, or None."""
        return None

    def control_residuals(self, denoiser: Denoiser, control, controlnet, model_input: torch.Tensor, timestep: Any,
                          inputs: dict[str, Any], control_input: torch.Tensor, scale: float) -> dict[str, Any]:
        """One ControlNet's contribution to a denoiser call (keyword arguments ``predict`` passes on)."""
        raise NotImplementedError(f"ControlNet is not supported for {self.display_name} yet")

    def with_references(self, cond: Conditioning, vae: Vae, pictures: torch.Tensor, raw: torch.Tensor) -> Conditioning:
        """``cond`` with reference pictures (IMAGE [N, H, W, 3]) and their raw VAE latents [N, C, h, w] added, one
        reference per picture; a family whose text encoder reads the pictures too re-encodes the prompt."""
        import dataclasses

        latents = self.reference_latents(vae, raw)
        return dataclasses.replace(
            cond, references=(*cond.references, *(latents[i:i + 1] for i in range(len(latents)))),
            reference_pictures=(*cond.reference_pictures, *(pictures[i:i + 1] for i in range(len(pictures)))))

    def reference_latents(self, vae: Vae, raw: torch.Tensor) -> torch.Tensor:
        """A reference picture's raw VAE latents in the denoiser's space, as the editing pipelines scale them:
        (raw - shift) x scale."""
        scale, shift = self.vae_latent_scaling(vae.module)
        return (raw - shift) * scale

    def latent_channels_of(self, denoiser: Denoiser) -> int:
        """Channels of the LATENT this denoiser works on (an inpainting model's input also holds the mask and the
        masked image's latents)."""
        channels = denoiser.module.config.in_channels
        return self.latent_channels if self.is_inpainting_model(denoiser) else channels

    @property
    def inpainting_input_channels(self) -> int:
        """The input channels of the family's inpainting models: latents, mask, masked image's latents (SD1.5/SDXL
        inpainting U-Nets: 4 + 1 + 4 = 9)."""
        return 2 * self.latent_channels + 1

    def is_inpainting_model(self, denoiser: Denoiser) -> bool:
        """A denoiser that takes the mask and the masked image's latents beside its latents."""
        return denoiser.module.config.get("in_channels") == self.inpainting_input_channels

    def inpainting_inputs(self, noise_mask: torch.Tensor, masked_latents: torch.Tensor) -> torch.Tensor:
        """What an inpainting model takes beside its latents, in the model layout, to be joined along the channels:
        here, as StableDiffusionInpaintPipeline, the mask at the latent size (binarised, then nearest) and the
        masked image's latents (model space, [B, C, h, w]) in that order."""
        import torch

        from .masks import latent_mask

        mask = latent_mask(noise_mask, masked_latents.shape, self.spatial_factor, self.mask_resize)
        return self.to_model_layout(torch.cat([mask.to(masked_latents), masked_latents], dim=1))

    def strength_steps(self, steps: int, strength: float) -> int:
        """How many of ``steps`` an image-to-image or inpainting run at ``strength`` takes, counted as the family's
        pipelines count them: the SD/SDXL pipelines run int(steps x strength); every flow-matching one (SD3, Flux,
        Flux.2, Qwen-Image, Z-Image img2img and inpaint) skips int(steps - steps x strength), so 4 steps at 0.6 run 2
        in the former and 3 in the latter."""
        if self.flow_matching:
            return steps - int(max(steps - steps * strength, 0))
        return min(int(steps * strength), steps)

    def set_timesteps(self, scheduler, steps: int, latents: torch.Tensor) -> None:
        """Timesteps for a run on ``latents`` (model space, unpacked); families with shifted schedules override."""
        scheduler.set_timesteps(steps, device=latents.device)

    def to_model_layout(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> the layout the denoiser and scheduler work on (Flux packs 2x2 patches)."""
        return latents

    def from_model_layout(self, latents: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return latents

    def __repr__(self) -> str:
        return f"<family {self.id}>"


@dataclass(frozen=True)
class TextSlot:
    """One text encoder a family takes: ``kind`` is the file it comes from (clip_l, clip_g, t5)."""

    kind: str
    projection: bool  # CLIPTextModelWithProjection (its projected pooled output is used)
    required: bool = True
