"""Model families: the only place where the differences between model families live.

A family adapter knows how to load its models (diffusers folder, single file),
how to turn a prompt into conditioning, how to call its denoiser for one step, its
latent layout and its preview colours. The denoise loop and the nodes ask the
adapter and never branch on the family themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..components import Conditioning, Denoiser, Guider, SchedulerSpec, TextEncoder, Vae


@dataclass(frozen=True)
class ModelInputs:
    """Per-run keyword arguments for ``Family.predict``: ``cfg`` for the batched [uncond, cond] call
    (None when the model cannot take CFG, e.g. guidance-distilled), ``cond`` for the positive prompt alone."""

    cfg: dict[str, Any] | None
    cond: dict[str, Any]


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
    host_latent_format: str = ""  # the host's previewer for this latent layout (ComfyUI: comfy.latent_formats.<name>)
    begin_index_on_full_run = False  # the family's pipeline calls scheduler.set_begin_index(0) for text-to-image

    def claims_checkpoint(self, keys: set[str]) -> bool:
        raise NotImplementedError

    def load_folder(self, path: str, dtype: torch.dtype, prediction: str) -> LoadedModel:
        raise NotImplementedError

    def load_single_file(self, path: str, keys: dict[str, tuple[int, ...]], dtype: torch.dtype, prediction: str,
                         vocab_dirs: tuple[str, ...]) -> LoadedModel:
        raise NotImplementedError

    def encode_prompt(self, text_encoder: TextEncoder, text: str, clip_skip: int) -> Conditioning:
        raise NotImplementedError

    def conditioning_problem(self, denoiser: Denoiser, cond: Conditioning) -> str | None:
        """Why ``cond`` cannot drive ``denoiser`` (None if it can)."""
        raise NotImplementedError

    def model_inputs(self, denoiser: Denoiser, guider: Guider, batch: int, image_size: tuple[int, int]) -> ModelInputs:
        """Everything besides latents and timestep the denoiser needs, for a batch of ``batch`` images of
        ``image_size`` (height, width) pixels."""
        raise NotImplementedError

    def predict(self, denoiser: Denoiser, model_input: torch.Tensor, timestep: Any, inputs: dict[str, Any]):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<family {self.id}>"


def all_families() -> list[Family]:
    from .stable_diffusion import STABLE_DIFFUSION
    from .stable_diffusion_xl import STABLE_DIFFUSION_XL

    return [STABLE_DIFFUSION, STABLE_DIFFUSION_XL]


def family_for_pipeline_class(class_name: str) -> Family | None:
    return next((f for f in all_families() if class_name in f.pipeline_classes), None)


def family_for_checkpoint(keys: set[str]) -> Family | None:
    return next((f for f in all_families() if f.claims_checkpoint(keys)), None)
