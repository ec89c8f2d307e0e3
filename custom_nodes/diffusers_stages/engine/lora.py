"""LoRA, non-destructively: adapters (peft, through diffusers' own loaders) that each run switches on or off.

A LoRA file is loaded once per model as a named adapter; the weights stay untouched (no fuse,
which is not exact: W + BA - BA != W in floating point). A Denoiser/TextEncoder handle carries the
LoRAs it was given with their strengths; before the model runs, exactly those adapters are
activated at those strengths, and a handle without LoRAs runs with adapters disabled, which is
bit-identical to never having loaded one. diffusers' ``lora_state_dict`` reads the formats people
have (diffusers/peft, kohya/A1111 ``lora_unet_…``/``lora_te_…``, ComfyUI-trained) and converts them.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from dataclasses import dataclass

import torch

from .errors import InputError

log = logging.getLogger("diffusers_stages")


@dataclass(frozen=True)
class LoraReport:
    adapter: str
    layers_in_file: int
    layers_matched: int


def adapter_name(path: str) -> str:
    """A name stable for one file version: the same file loaded twice shares one adapter."""
    stat = os.stat(path)
    digest = hashlib.sha1(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return f"ds_lora_{digest[:12]}"


def _lora_layers(module, adapter: str) -> int:
    return sum(1 for m in module.modules() if adapter in getattr(m, "lora_A", {}))


def _layers_in(state: dict, prefix: str) -> int:
    return sum(1 for k in state if k.startswith(prefix) and k.endswith(("lora.down.weight", "lora_A.weight",
                                                                         "lora_linear_layer.down.weight")))


def load_lora(path: str, family, denoiser_module, text_targets: list[tuple]) -> LoraReport:
    """Load the LoRA file as an adapter into the denoiser and the text encoders it has weights for.
    ``text_targets``: (text encoder module, its key prefix in LoRA files), from the family."""
    text_modules = [module for module, _ in text_targets]
    import diffusers

    if not family.lora_pipeline:
        raise InputError("lora_name", f"LoRAs for {family.display_name} are not supported yet.",
                         "use a LoRA with an SD1.x/2.x, SDXL, SD3 or Flux.1 model.")
    try:
        import peft  # noqa: F401 - diffusers' LoRA loading runs on peft
    except ImportError as exc:
        raise InputError("lora_name", "LoRAs need the 'peft' package, which is not installed.",
                         "install the pack's requirements (pip install -r requirements.txt, or peft alone), then "
                         "restart.") from exc
    name = adapter_name(path)
    modules = [denoiser_module, *text_modules]
    if all(name in _tried(m) for m in modules):
        return LoraReport(name, -1, -1)  # already loaded into these models (or found to have nothing for them)
    loader = getattr(diffusers, family.lora_pipeline)
    try:
        state, alphas, metadata, left_out = read_lora(loader, family, path, denoiser_module)
    except Exception as exc:  # diffusers raises ValueError/KeyError for layouts it cannot convert
        raise InputError("lora_name", f"'{os.path.basename(path)}' is not a LoRA diffusers can read ({exc}).",
                         "use a LoRA .safetensors file (diffusers, kohya/A1111 or ComfyUI format).") from exc
    prefixes = (f"{family.lora_denoiser}.", *(f"{prefix}." for _, prefix in text_targets))
    in_file = sum(_layers_in(state, p) for p in prefixes)
    other = [k for k in state if not k.startswith(prefixes)] + left_out
    try:
        if name not in _tried(denoiser_module):
            load_into_denoiser(loader, family, state, alphas, metadata, denoiser_module, name)
        for module, prefix in text_targets:
            if name not in _tried(module):
                loader.load_lora_into_text_encoder(state, alphas, text_encoder=module, prefix=prefix,
                                                   lora_scale=1.0, adapter_name=name, metadata=metadata)
                put_back_dora_magnitudes(state, prefix, module, name)
    except (RuntimeError, ValueError) as exc:  # peft: size mismatches when the LoRA was made for another model
        _remove(modules, name)
        if "not found in the base model" in str(exc):  # not one layer name matched
            raise InputError("lora_name", f"none of the {in_file + len(other)} LoRA layers/keys of "
                             f"'{os.path.basename(path)}' matched a layer of this {family.display_name} model (0 "
                             "matched).", "use a LoRA made for this model family.") from exc
        raise InputError("lora_name", f"'{os.path.basename(path)}' does not fit this {family.display_name} model "
                         f"({str(exc).splitlines()[0][:300]}).",
                         "use a LoRA trained for this model family (SD1.5 LoRAs do not fit SDXL and vice versa)."
                         ) from exc
    foreign = "transformer." if family.lora_denoiser == "unet" else "unet."
    if _lora_layers(denoiser_module, name) == 0 and any(k.startswith(foreign) for k in state):
        _remove(modules, name)
        kind = "a DiT (SD3/Flux)" if foreign == "transformer." else "a U-Net (SD1.x/SDXL)"
        raise InputError("lora_name", f"'{os.path.basename(path)}' is made for {kind} model; none of its denoiser "
                         f"layers fit this {family.display_name} model (0 matched).",
                         "use a LoRA made for this model family.")
    matched = sum(_lora_layers(m, name) for m in modules)
    if matched == 0:
        _remove(modules, name)
        raise InputError("lora_name", f"none of the {in_file + len(other)} LoRA layers/keys of "
                         f"'{os.path.basename(path)}' matched a layer of this {family.display_name} model.",
                         "use a LoRA made for this model family.")
    for module in modules:  # loaded, or nothing in the file for it: not read again for these models
        _tried(module).add(name)
    if matched < in_file or other:
        log.warning("LoRA %s: %d of %d layers matched; %d keys were not understood (e.g. %s)",
                    os.path.basename(path), matched, in_file, len(other), other[:1])
    return LoraReport(name, in_file, matched)


def put_back_dora_magnitudes(state: dict, prefix: str, text_encoder, name: str) -> int:
    """A DoRA LoRA's magnitude vectors for a text encoder, as the file holds them. transformers' ``load_adapter``
    (5.24 with peft 0.21) leaves them at their initial value (the norm of a randomly initialised adapter), so
    diffusers' own pipelines run text-encoder DoRA with magnitudes that are neither the file's nor reproducible;
    denoiser DoRA loads correctly. Returns how many vectors were set."""
    count = 0
    for key, value in state.items():
        if not (key.startswith(f"{prefix}.") and key.endswith(".lora_magnitude_vector")):
            continue
        path = key[len(prefix) + 1:-len(".lora_magnitude_vector")]
        if not hasattr(text_encoder, "text_model"):  # flattened CLIP in transformers 5 (as diffusers strips it)
            path = path.removeprefix("text_model.")
        try:
            vector = text_encoder.get_submodule(path).lora_magnitude_vector[name].weight
        except (AttributeError, KeyError):
            continue
        if vector.shape == value.shape:
            with torch.no_grad():
                vector.copy_(value.to(device=vector.device, dtype=vector.dtype))
            count += 1
    return count


def _tried(module) -> set[str]:
    """The adapters already loaded into ``module`` (or found to have no weights for it)."""
    if not hasattr(module, "_diffusers_stages_loras"):
        module._diffusers_stages_loras = set()
    return module._diffusers_stages_loras


def _remove(modules: list, name: str) -> None:
    """Take a refused LoRA's adapter out of the models it was partly loaded into, as diffusers'
    ``delete_adapters`` does: diffusers models delete their own; transformers text encoders lose the adapter's
    layers through diffusers' helper (transformers' ``delete_adapter`` demands a newer peft than PyPI has)."""
    from diffusers.utils.peft_utils import delete_adapter_layers

    for module in modules:
        if name in (getattr(module, "peft_config", None) or {}):
            if hasattr(module, "delete_adapters"):
                module.delete_adapters(name)
            else:
                delete_adapter_layers(module, name)


COMFY_PREFIX = "diffusion_model."  # LoRAs saved by ComfyUI's own trainer (Save LoRA Weights)


def comfy_lora_as_kohya(tensors: dict) -> tuple[dict, list[str]]:
    """A ComfyUI-trained LoRA (``diffusion_model.<original-layout module>.lora_up/lora_down.weight``, no alpha,
    applied at scale 1 by ComfyUI) in the kohya layout diffusers converts (``lora_unet_<module with _>``, alpha =
    rank for scale 1). Returns it with the keys a LoRA cannot hold (ComfyUI's full ``.diff``/``.diff_b`` deltas)."""
    out, left = {}, []
    for key, value in tensors.items():
        module, _, kind = key[len(COMFY_PREFIX):].rpartition(".lora_")
        if not key.startswith(COMFY_PREFIX) or kind not in ("up.weight", "down.weight"):
            if not key.endswith(".alpha"):
                left.append(key)
            continue
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_{kind}"] = value
        if kind == "down.weight":
            alpha = tensors.get(f"{COMFY_PREFIX}{module}.alpha")
            out[f"{name}.alpha"] = alpha if alpha is not None else torch.tensor(float(value.shape[0]))
    return out, left


def read_lora(loader, family, path: str, denoiser_module) -> tuple[dict, dict | None, dict | None, list[str]]:
    """(state dict, network alphas, adapter metadata, keys left out) in diffusers' layout, as the family's
    pipeline's ``load_lora_weights`` reads a LoRA file: the metadata (``lora_alpha``, rank and alpha patterns that
    diffusers' ``save_lora_weights`` writes into the safetensors header) goes on to the loaders, as there.
    ComfyUI-trained files are first put in the kohya layout, which diffusers converts."""
    from safetensors import safe_open

    params = inspect.signature(loader.lora_state_dict).parameters
    kwargs = {"return_alphas": True} if "return_alphas" in params else {}  # Flux
    kwargs["return_lora_metadata"] = True
    source, left = path, []
    with safe_open(path, framework="pt") as f:
        # ComfyUI's trainer writes lora_up/lora_down; "diffusion_model." files with lora_A/lora_B (ai-toolkit,
        # musubi-tuner) go to diffusers' converters as they are
        comfy = any(k.startswith(COMFY_PREFIX) and (".lora_up." in k or ".lora_down." in k) for k in f.keys())
    if comfy:
        from safetensors.torch import load_file

        source, left = comfy_lora_as_kohya(load_file(path))
    if family.lora_denoiser == "unet" and (comfy or family.lora_text_prefixes[1:]):
        kwargs["unet_config"] = denoiser_module.config  # maps original-layout (SGM) block names to diffusers'
    out = loader.lora_state_dict(source, **kwargs)
    state, alphas, metadata = (out[0], None, out[1]) if len(out) == 2 else out  # SD3 reads no network alphas
    return state, alphas, metadata, left


def load_into_denoiser(loader, family, state: dict, alphas, metadata, module, name: str) -> None:
    if family.lora_denoiser == "unet":
        loader.load_lora_into_unet(state, alphas, unet=module, adapter_name=name, metadata=metadata)
        return
    load = loader.load_lora_into_transformer
    if "network_alphas" in inspect.signature(load).parameters:  # Flux
        load(state, alphas, transformer=module, adapter_name=name, metadata=metadata)
    else:  # SD3
        load(state, transformer=module, adapter_name=name, metadata=metadata)


def activate(module, loras: tuple[tuple[str, float], ...], text_encoder: bool) -> None:
    """Switch ``module``'s adapters to exactly ``loras`` (name, strength); none: adapters off."""
    present = getattr(module, "peft_config", None)
    if not present:
        return  # no LoRA was ever loaded into this model
    active = [(name, weight) for name, weight in loras if name in present]
    if text_encoder:
        from diffusers.loaders.lora_base import (
            disable_lora_for_text_encoder,
            enable_lora_for_text_encoder,
            set_adapters_for_text_encoder,
        )

        if not active:
            disable_lora_for_text_encoder(module)
            return
        enable_lora_for_text_encoder(module)
        set_adapters_for_text_encoder([n for n, _ in active], module, [w for _, w in active])
    else:
        if not active:
            module.disable_lora()
            return
        module.enable_lora()
        module.set_adapters([n for n, _ in active], [w for _, w in active])
