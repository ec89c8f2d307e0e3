"""The engine objects that travel between nodes.

They are immutable from the graph's point of view: a node that changes something
returns a new object (``dataclasses.replace``), so two branches of one graph never
see each other's changes. ``residency`` is an opaque handle the host adapter attaches
(ComfyUI's memory manager, or a headless stand-in); the engine never looks inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .family import Family


class HostManaged:
    """A model handle the host may hold through ``residency``."""

    @property
    def patcher(self):
        """The host's model wrapper holding this model, or None. ComfyUI (v0.2x+) looks for it under this name: its
        default RAM-pressure cache then drops an old workflow's model outputs first, ours as its own."""
        return getattr(self.residency, "patcher", None)


@dataclass(frozen=True, eq=False)
class Denoiser(HostManaged):
    family: Family
    module: Any  # a diffusers UNet2DConditionModel (or, later, a DiT)
    source: str
    # LATENT holds raw VAE latents; the denoiser works on (raw - shift) * scale (floats, or per-channel tensors [C]
    # for VAEs that normalise each channel, as Qwen-Image's latents_mean / latents_std)
    latent_scale: Any = 1.0
    latent_shift: Any = 0.0
    residency: Any = None
    loras: tuple[tuple[str, float], ...] = ()  # (adapter name, strength) switched on while this handle runs

    @property
    def dtype(self):
        return self.module.dtype

    def _per_channel(self, value, like: torch.Tensor):
        import torch

        if isinstance(value, torch.Tensor):
            return value.to(device=like.device, dtype=like.dtype).view(1, -1, *([1] * (like.ndim - 2)))
        return value

    def to_model_space(self, raw: torch.Tensor) -> torch.Tensor:
        """(raw - shift) * scale, as the pipelines scale VAE latents for the denoiser."""
        if not _is_zero(self.latent_shift):
            raw = raw - self._per_channel(self.latent_shift, raw)
        return raw * self._per_channel(self.latent_scale, raw)

    def to_raw_space(self, latents: torch.Tensor) -> torch.Tensor:
        """latents / scale + shift, as the pipelines unscale latents before decoding."""
        raw = latents / self._per_channel(self.latent_scale, latents)
        if not _is_zero(self.latent_shift):
            raw = raw + self._per_channel(self.latent_shift, latents)
        return raw

    def same_scaling(self, scale, shift) -> bool:
        """This denoiser's latent scaling is ``scale`` / ``shift`` (floats or tensors)."""
        import torch

        def same(a, b):
            if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
                return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
            return a == b
        return same(scale, self.latent_scale) and same(shift, self.latent_shift)


def _is_zero(value) -> bool:
    import torch

    return not isinstance(value, torch.Tensor) and not value


@dataclass(frozen=True)
class TextPart:
    """One tokenizer + text encoder pair (SDXL has two, SD3 three)."""

    tokenizer: Any
    module: Any  # a transformers text model (CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel)
    image_processor: Any = None  # a vision-language encoder's picture preprocessing (Qwen2.5-VL), from its folder


@dataclass(frozen=True, eq=False)
class TextEncoder(HostManaged):
    family: Family
    parts: tuple[TextPart, ...]
    source: str
    residency: Any = None
    loras: tuple[tuple[str, float], ...] = ()
    # diffusers' force_zeros_for_empty_prompt (SDXL pipelines' config): with no negative prompt, CFG guides away
    # from zero embeddings instead of an encoded empty prompt
    force_zeros_for_empty_prompt: bool = True

    @property
    def modules(self) -> list[Any]:
        return [part.module for part in self.parts]


@dataclass(frozen=True, eq=False)
class Vae(HostManaged):
    family: Family | None  # None for a VAE loaded on its own (its latent channels are still checked)
    module: Any  # diffusers AutoencoderKL
    source: str
    residency: Any = None

    @property
    def scaling_factor(self) -> float:
        return self.module.config.scaling_factor

    @property
    def latent_channels(self) -> int:
        """Channels of the LATENT this VAE makes and decodes (a patched VAE's: its latent's patches as channels)."""
        config = self.module.config
        channels = config.get("latent_channels") or config["z_dim"]  # Wan-style VAEs (Qwen-Image) call it z_dim
        return channels * self.patch[0] * self.patch[1]

    @property
    def patch(self) -> tuple[int, int]:
        """(1, 1), or for a VAE that normalises its latent in 2x2 patches (Flux.2's AutoencoderKLFlux2, with a batch
        norm over the patches' channels) the patch: LATENT is then the patched, normalised latent, as core ComfyUI
        and the Flux.2 pipelines keep it."""
        config = self.module.config
        if "batch_norm_eps" not in config:
            return (1, 1)
        return tuple(config["patch_size"])

    @property
    def has_frames(self) -> bool:
        """A video-style VAE (Wan, Qwen-Image) that works on [B, C, frames, H, W]; images are one frame."""
        return "temperal_downsample" in self.module.config

    @property
    def pixel_multiple(self) -> int:
        """What a picture's sides are cropped to a multiple of before encoding: the model family's size multiple
        (2x2 transformer patches: 16 px) when the VAE came with its model, else one latent cell."""
        return self.family.size_multiple if self.family is not None else self.spatial_factor

    @property
    def spatial_factor(self) -> int:
        config = self.module.config
        # each level but the last halves the image (Wan-style VAEs list their levels as dim_mult)
        levels = config["dim_mult"] if self.has_frames else config.block_out_channels
        return 2 ** (len(levels) - 1) * self.patch[0]


@dataclass(frozen=True)
class SchedulerSpec:
    """What scheduler to build, not a scheduler: schedulers are stateful, so each run makes its own."""

    class_name: str
    config: tuple[tuple[str, Any], ...]  # frozen items of the diffusers scheduler config
    sampler: str = "model default"
    schedule: str = "model default"
    explicit_schedule: str = ""  # a schedule the class has no flag for, given as explicit sigmas (engine/sigmas.py)

    @property
    def config_dict(self) -> dict[str, Any]:
        return dict(self.config)


@dataclass(frozen=True, eq=False)
class ControlNet(HostManaged):
    family: Family
    module: Any  # a diffusers ControlNetModel
    source: str
    residency: Any = None


@dataclass(frozen=True, eq=False)
class Control:
    """A ControlNet attached to a prompt: its control image (IMAGE, [B, H, W, C] in 0..1), strength and window."""

    controlnet: ControlNet
    image: torch.Tensor
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    vae: Vae | None = None  # SD3/Flux ControlNets take the control image as VAE latents
    mode: int | None = None  # union ControlNets: which kind of control the image is

    def active_at(self, step: int, steps: int) -> bool:
        """diffusers' control_guidance_start/end: on unless step/steps < start or (step+1)/steps > end."""
        return not (step / steps < self.start_percent or (step + 1) / steps > self.end_percent)


@dataclass(frozen=True, eq=False)
class Conditioning:
    """Encoded prompt: ``embeds`` [1, tokens, dim] (``pooled`` [1, dim] for families that use it)."""

    family: Family
    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    text: str = ""
    # SDXL micro-conditioning: (original h, w, crop top, left, target h, w); None = the generated size, no crop
    size: tuple[int, int, int, int, int, int] | None = None
    # SDXL refiner: the aesthetic score it is told; None = its pipeline's default (6.0 positive, 2.5 negative)
    aesthetic_score: float | None = None
    # guidance-distilled models (Flux dev): the guidance value the transformer is told; None = the family default
    guidance: float | None = None
    # SD3: the T5 sequence kept apart from the CLIP embeddings (None: no T5 encoder, zeros of t5_length are used)
    t5: torch.Tensor | None = None
    t5_length: int = 0
    controls: tuple[Control, ...] = ()  # ControlNets applied while this prompt drives a step, in the order added
    # reference images (editing: Flux.1 Kontext, Flux.2, Qwen-Image-Edit), in the order added: their VAE latents in
    # the denoiser's space [1, C, h, w] (Family.reference_latents), and the pictures (IMAGE [1, H, W, 3]) for text
    # encoders that read them too
    references: tuple[torch.Tensor, ...] = ()
    reference_pictures: tuple[torch.Tensor, ...] = ()
    # how it was encoded, so the same encoder can make the negative a pipeline uses when none is given
    text_encoder: TextEncoder | None = None
    encode_settings: tuple[int, int] = (0, 0)  # (clip_skip, t5_max_length)


@dataclass(frozen=True, eq=False)
class Guider:
    """Classifier-free guidance: positive, negative, scale, rescale and the step interval where it applies."""

    positive: Conditioning
    negative: Conditioning | None  # None: no guidance (the positive prompt alone drives every step)
    scale: float = 7.5
    rescale: float = 0.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    # skip-layer guidance (SD3.5): an extra prediction without these transformer layers, pushed away from
    skip_layers: tuple[int, ...] = ()
    skip_scale: float = 2.8
    skip_start: float = 0.01
    skip_stop: float = 0.2
    # how the predictions combine: "cfg"; "pag" as the PAG pipelines run it; or a diffusers guider run as its
    # modular pipelines run it ("cfg_zero_star", "apg", "tcfg", "seg", "slg", "fdg"), with that method's own settings
    method: str = "cfg"
    method_options: tuple[tuple[str, Any], ...] = ()

    def skip_active_at(self, step: int, steps: int) -> bool:
        """The pipeline's window: strictly between steps*start and steps*stop (so never at step 0)."""
        return bool(self.skip_layers) and steps * self.skip_start < step < steps * self.skip_stop

    @staticmethod
    def scale_guides(scale: float) -> bool:
        """A scale that guides: above 1, as diffusers decides (ComfyUI skips CFG only at exactly 1)."""
        return scale > 1.0

    @property
    def guides(self) -> bool:
        """CFG runs at all: a negative prompt and a scale that guides."""
        return self.scale_guides(self.scale) and self.negative is not None

    def active_at(self, step: int, steps: int) -> bool:
        """CFG applies at this step: ``guides`` and the step inside [start, end)."""
        return self.guides and in_window(step, steps, self.start_percent, self.end_percent)


def in_window(step: int, steps: int, start: float, end: float) -> bool:
    """A guidance node's step window: the step's fraction of the run in [start, end) (an end of 1 takes the last
    step too)."""
    position = step / steps
    return start <= position and (position < end or end >= 1.0)
