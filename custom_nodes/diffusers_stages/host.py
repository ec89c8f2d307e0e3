"""The host adapter: the only module that imports ``comfy.*``.

Inside ComfyUI every service goes through the host (devices and dtypes, the memory
manager, progress bars, interrupts, previews, model folders). Without ComfyUI (tests,
the headless runner) each service has a plain fallback: the best torch device,
a tqdm progress bar, Ctrl-C, and a ``models/`` folder laid out like ComfyUI's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("diffusers_stages")

try:  # ComfyUI is present only when the pack runs inside it
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.utils as _comfy_utils
    import folder_paths as _folder_paths

    IN_COMFYUI = True
except ImportError:
    IN_COMFYUI = False

_headless_models_dir = os.environ.get("DIFFUSERS_STAGES_MODELS", os.path.join(os.getcwd(), "models"))


# ---- model folders ---------------------------------------------------------------------------------
def set_models_dir(path: str) -> None:
    """Headless only: the folder holding diffusers/, checkpoints/, … (ComfyUI's own folders win inside ComfyUI)."""
    global _headless_models_dir
    _headless_models_dir = path


def model_roots(kind: str) -> list[str]:
    if IN_COMFYUI:
        return list(_folder_paths.get_folder_paths(kind))
    return [os.path.join(_headless_models_dir, kind)]


def list_model_files(kind: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files of a model folder kind, relative and '/'-separated, filtered by suffix. Inside ComfyUI, the host's list
    (its folders and extra_model_paths), plus the suffixes it does not register for that kind (.gguf) found by
    walking the same folders."""
    found = set()
    if IN_COMFYUI:
        found.update(f for f in _folder_paths.get_filename_list(kind) if f.lower().endswith(suffixes))
        registered = tuple(_folder_paths.folder_names_and_paths.get(kind, ((), set()))[1])
        suffixes = tuple(s for s in suffixes if s not in registered)
        if not suffixes:
            return sorted(found)
    for root in model_roots(kind):
        for current, _dirs, files in os.walk(root, followlinks=True):
            for name in files:
                if name.lower().endswith(suffixes):
                    found.add(os.path.relpath(os.path.join(current, name), root).replace(os.sep, "/"))
    return sorted(found)


def provide_template_inputs(folder: str) -> list[str]:
    """Inside ComfyUI: copy the input pictures the shipped templates name (``folder``) into the host's input
    folder, so that Load Image shows them instead of a missing file. A file already there is never replaced."""
    if not IN_COMFYUI or not os.path.isdir(folder):
        return []
    import shutil

    target = _folder_paths.get_input_directory()
    copied = []
    for name in sorted(os.listdir(folder)):
        destination = os.path.join(target, name)
        if name.lower().endswith(".png") and not os.path.exists(destination):
            try:
                os.makedirs(target, exist_ok=True)
                shutil.copyfile(os.path.join(folder, name), destination)
                copied.append(name)
            except OSError as error:  # a read-only input folder: the templates still load, without their picture
                log.warning("Diffusers Stages: could not copy template input %s to %s (%s)", name, target, error)
    if copied:
        log.info("Diffusers Stages: template input pictures copied to %s: %s", target, ", ".join(copied))
    return copied


def clip_vocab_dirs() -> tuple[str, ...]:
    """Folders with a CLIP ``vocab.json`` + ``merges.txt`` the host ships (ComfyUI: comfy/sd1_tokenizer)."""
    if not IN_COMFYUI:
        return ()
    return (os.path.join(_comfy_package_dir(), "sd1_tokenizer"),)


def t5_tokenizer_dirs() -> tuple[str, ...]:
    """Folders with a T5 tokenizer the host ships (ComfyUI: comfy/text_encoders/t5_tokenizer)."""
    if not IN_COMFYUI:
        return ()
    return (os.path.join(_comfy_package_dir(), "text_encoders", "t5_tokenizer"),)


def qwen_tokenizer_dirs() -> tuple[str, ...]:
    """Folders with a Qwen tokenizer the host ships (ComfyUI: comfy/text_encoders/qwen25_tokenizer, which its own
    Qwen3 text encoders use)."""
    if not IN_COMFYUI:
        return ()
    return (os.path.join(_comfy_package_dir(), "text_encoders", "qwen25_tokenizer"),)


def _comfy_package_dir() -> str:
    # `comfy` is a namespace package in ComfyUI (no __init__.py, so no __file__): locate it through a module
    return os.path.dirname(os.path.abspath(_comfy_utils.__file__))


# ---- devices and dtypes ------------------------------------------------------------------------------
def compute_device() -> torch.device:
    if IN_COMFYUI:
        return _mm.get_torch_device()
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where LATENT and IMAGE tensors live between nodes."""
    return _mm.intermediate_device() if IN_COMFYUI else torch.device("cpu")


_DTYPE_NAMES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def default_dtype(family: Any = None) -> torch.dtype:
    """The dtype "auto" means for a model of ``family``: the host's choice among the precisions the family runs well
    in (Flux prefers bf16: it overflows in fp16), as ComfyUI decides for its own models; headless, the first of those
    the CUDA device supports, and fp32 on the CPU."""
    preferred = [_DTYPE_NAMES[name] for name in getattr(family, "inference_dtypes", ("fp16", "bf16", "fp32"))]
    if IN_COMFYUI:
        return _mm.unet_dtype(supported_dtypes=preferred)
    if compute_device().type == "cuda":
        return next(d for d in preferred if d is not torch.bfloat16 or torch.cuda.is_bf16_supported())
    return torch.float32


# ---- memory manager ------------------------------------------------------------------------------------
_DEVICES = {  # component kind -> (load device, offload device) in ComfyUI
    "denoiser": ("get_torch_device", "unet_offload_device"),
    "text_encoder": ("text_encoder_device", "text_encoder_offload_device"),
    "vae": ("vae_device", "vae_offload_device"),
}


@dataclass(eq=False)
class Residency:
    """Where a module lives and who moves it. Inside ComfyUI: a ModelPatcher around a plain holder module."""

    modules: list[Any]
    patcher: Any = None


def manage(modules: list[torch.nn.Module], kind: str) -> Residency:
    """Register loaded modules (moved as one) with the host. Headless, they simply move to the compute device once.
    Modules that diffusers' offload hooks move (the loaders' memory option) are left to them."""
    from .engine.memory import offloaded

    held = [module for module in modules if not offloaded(module)]
    if not IN_COMFYUI:
        for module in held:
            module.to(compute_device())
        return Residency(modules)
    if not held:
        return Residency(modules)
    load_name, offload_name = _DEVICES[kind]
    patcher = _patcher.ModelPatcher(holder_of(held), load_device=getattr(_mm, load_name)(),
                                    offload_device=getattr(_mm, offload_name)())
    return Residency(modules, patcher)


def holder_of(modules: list[torch.nn.Module]) -> torch.nn.Module:
    """The module the host's patcher wraps: ModelPatcher sets `.device` on its model, which diffusers models make a
    read-only property, so a plain holder carries them. Its class is named after what it holds, as the host logs
    "Requested to load <class name>" (e.g. Flux2Transformer2DModel, CLIPTextModel+CLIPTextModelWithProjection)."""
    name = "+".join(type(module).__name__ for module in modules) or "DiffusersStagesModules"
    holder = type(name, (torch.nn.Module,), {"__module__": __name__})()
    for index, module in enumerate(modules):
        holder.add_module(f"wrapped_{index}", module)
    return holder


def ensure_loaded(*residencies: Residency) -> None:
    """Bring modules onto their compute device before use (ComfyUI may have offloaded them). Inside ComfyUI the host
    decides how much of each model fits: where its memory is short it loads a model partially (its low-VRAM path),
    leaving the weights of some layers on the offload device; those layers then bring their weights along for each
    call (``_stream``)."""
    patchers = [r.patcher for r in residencies if r is not None and r.patcher is not None]
    if not patchers:
        return
    for patcher in patchers:
        _offer_partial_loading(patcher.model)
    _mm.load_models_gpu(patchers)
    for patcher in patchers:
        _stream(patcher.model, patcher.load_device)


def _on(tensor: torch.Tensor, device: torch.device) -> bool:
    """Whether ``tensor`` is on ``device`` ('cuda' means any CUDA index, as the host names its load device)."""
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


def _offer_partial_loading(holder: torch.nn.Module) -> None:
    """Mark the layers the host may leave on the offload device (its partial loading considers only modules carrying
    ``comfy_cast_weights``, sets the flag to True for those it leaves, and reads their ``weight`` and ``bias``): those
    with a weight parameter and a bias attribute (Linear, Conv, norms). Other modules holding tensors (embeddings,
    RMS norms, quantized linears, whose weight is computed) are loaded by the host where they fit; either way,
    ``_stream`` brings what stays behind."""
    for module in holder.modules():
        if "weight" in module._parameters and hasattr(module, "bias") and not hasattr(module, "comfy_cast_weights"):
            module.comfy_cast_weights = False


def _stream(holder: torch.nn.Module, device: torch.device) -> None:
    """After the host loaded ``holder`` (wholly or partly): each module with a weight left off ``device`` moves its
    own weights there for each call and back after it; modules wholly on ``device`` run as they are (no hook)."""
    for module in holder.modules():
        away = any(t is not None and not _on(t, device)
                   for t in (*module._parameters.values(), *module._buffers.values()))
        hooks = module.__dict__.get("_stages_stream_hooks")
        if away and hooks is None:
            module._stages_stream_device = device
            module._stages_stream_hooks = (module.register_forward_pre_hook(_bring_weights),
                                           module.register_forward_hook(_return_weights))
        elif not away and hooks is not None:
            for hook in hooks:
                hook.remove()
            del module._stages_stream_hooks


def _bring_weights(module: torch.nn.Module, _args) -> None:
    """Forward pre-hook: the module's own tensors that are off its device, replaced by copies on it for this call."""
    device, moved = module._stages_stream_device, []
    for table in (module._parameters, module._buffers):
        for name, tensor in list(table.items()):
            if tensor is not None and not _on(tensor, device):
                moved.append((table, name, tensor))
                copy = tensor.detach().to(device, non_blocking=True)
                table[name] = torch.nn.Parameter(copy, requires_grad=False) if isinstance(
                    tensor, torch.nn.Parameter) else copy
    module._stages_streamed = moved


def _return_weights(module: torch.nn.Module, _args, _output) -> None:
    """Forward hook: the module's own tensors put back (the copies are dropped)."""
    for table, name, tensor in module.__dict__.pop("_stages_streamed", ()):
        table[name] = tensor


# ---- progress, interrupts, previews -----------------------------------------------------------------------
class Progress:
    """Per-step progress: host progress bar (+ interrupt check, + preview) or tqdm headless."""

    def __init__(self, total: int, latent_format: str = "", node_name: str = ""):
        self.total = total
        self._previewer = None
        if IN_COMFYUI:
            self._bar = _comfy_utils.ProgressBar(total)
            self._previewer = _previewer(latent_format)
        else:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=node_name or "denoise", leave=False, disable=None)

    def step(self, index: int, total: int, x0: torch.Tensor | None) -> None:
        if IN_COMFYUI:
            _mm.throw_exception_if_processing_interrupted()
            preview = None
            if self._previewer is not None and x0 is not None:
                preview = self._previewer.decode_latent_to_preview_image("JPEG", x0)
            self._bar.update_absolute(index + 1, total, preview)
        else:
            if self._bar.total != total:
                self._bar.total = total
            self._bar.update(1)

    def close(self) -> None:
        if not IN_COMFYUI:
            self._bar.close()


def _previewer(latent_format: str):
    """The host's latent previewer (None unless previews are on: --preview-method or per prompt)."""
    if not latent_format:
        return None
    try:
        import comfy.latent_formats
        import latent_preview

        fmt = getattr(comfy.latent_formats, latent_format)()
        return latent_preview.get_previewer(compute_device(), fmt)
    except Exception as exc:  # a preview must never break a run
        log.debug("no previewer for %s: %s", latent_format, exc)
        return None
