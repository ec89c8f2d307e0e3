"""Every node follows ComfyUI's V1 node contract, and the pack imports without ComfyUI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from diffusers_stages.nodes import ALL_NODES, NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from diffusers_stages.nodes.base import PACK

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECT_INFO = os.path.join(REPO, "..", "shared", "data", "comfyui-0.8.0-object_info.json")
CORE_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "IMAGE", "LATENT", "MASK", "COMBO"}
WIDGET_OPTIONS = {"default", "min", "max", "step", "round", "tooltip", "multiline", "dynamicPrompts", "advanced",
                  "control_after_generate", "display", "forceInput", "label_on", "label_off", "placeholder"}


def test_pack_imports_without_comfyui_under_any_folder_name(tmp_path):
    """Load the repo root the way ComfyUI does (spec_from_file_location, an odd module name), in a clean process."""
    link = tmp_path / "Some Folder-Name.v2"
    link.symlink_to(REPO, target_is_directory=True)
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("custom_nodes_x_odd_name", {str(link / '__init__.py')!r},
                                              submodule_search_locations=[{str(link)!r}])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
assert not any(name == "comfy" or name.startswith("comfy.") for name in sys.modules), "comfy was imported"
print(sorted(module.NODE_CLASS_MAPPINGS), module.WEB_DIRECTORY)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DS_LoadModel" in result.stdout and "DS_Denoise" in result.stdout
    web = os.path.join(REPO, result.stdout.split()[-1])
    assert os.path.isdir(web)


def test_ids_are_stable_prefixed_and_unique():
    assert len(NODE_CLASS_MAPPINGS) == len(ALL_NODES)
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        assert re.fullmatch(r"DS_[A-Za-z0-9]+", node_id) and cls.NODE_ID == node_id
        assert NODE_DISPLAY_NAME_MAPPINGS[node_id] == cls.DISPLAY_NAME
    assert len(set(NODE_DISPLAY_NAME_MAPPINGS.values())) == len(NODE_DISPLAY_NAME_MAPPINGS)


@pytest.mark.skipif(not os.path.isfile(OBJECT_INFO), reason="shared/data object_info dump not beside the repo")
def test_no_clash_with_core_nodes():
    with open(OBJECT_INFO) as f:
        core = json.load(f)
    assert not set(NODE_CLASS_MAPPINGS) & set(core)  # ComfyUI silently drops packs' nodes named like core ones
    assert not set(NODE_DISPLAY_NAME_MAPPINGS.values()) & {info["display_name"] for info in core.values()}


@pytest.mark.parametrize("cls", ALL_NODES, ids=lambda c: c.NODE_ID)
def test_v1_contract(cls, models_root):
    spec = cls.INPUT_TYPES()  # a classmethod callable on the class
    assert set(spec) <= {"required", "optional", "hidden"} and spec["required"]
    for name, entry in {**spec.get("required", {}), **spec.get("optional", {})}.items():
        assert isinstance(entry, tuple) and len(entry) == 2, name
        kind, options = entry
        assert options.get("tooltip"), f"{cls.NODE_ID}.{name} has no tooltip"
        assert set(options) <= WIDGET_OPTIONS, (name, set(options) - WIDGET_OPTIONS)
        if isinstance(kind, list):  # combo
            assert all(isinstance(v, str) for v in kind)
            assert "default" not in options or options["default"] in kind
        else:
            assert kind in CORE_TYPES or kind.startswith("DS_"), kind
        if kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"], name
        if kind == "INT" and name in ("seed", "noise_seed"):
            assert options.get("control_after_generate") is True
    assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    assert callable(getattr(cls(), cls.FUNCTION))
    assert cls.CATEGORY.startswith(PACK + "/")
    assert cls.DESCRIPTION and re.fullmatch(r"\d+\.\d+\.\d+", cls.VERSION)
    assert cls.DESCRIPTION.endswith(f"[node v{cls.VERSION}]")  # the version users can see
    if hasattr(cls, "VALIDATE_INPUTS"):
        declared = next(k.__dict__["VALIDATE_INPUTS"] for k in cls.__mro__ if "VALIDATE_INPUTS" in k.__dict__)
        assert isinstance(declared, classmethod)  # (possibly inherited, as the guider nodes share CFG Guider's)
    # every input the function takes is declared, and every required input is accepted
    import inspect

    params = inspect.signature(cls.run).parameters
    assert set(spec["required"]) <= set(params), set(spec["required"]) - set(params)


def test_help_pages_exist():
    for node_id in NODE_CLASS_MAPPINGS:
        path = os.path.join(REPO, "custom_nodes", "diffusers_stages", "web", "docs", f"{node_id}.md")
        assert os.path.isfile(path), f"missing help page {path}"


def test_requirements_and_pyproject_list_the_same_packages_and_no_torch():
    """ComfyUI-Manager installs requirements.txt, the registry reads pyproject's dependencies: they must agree, and
    neither may pin the host's torch."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "requirements.txt")) as f:
        requirements = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        dependencies = set(tomllib.load(f)["project"]["dependencies"])
    assert requirements == dependencies
    assert not any(re.match(r"torch(vision|audio)?\b", r) for r in requirements)


def test_auto_dtype_follows_the_family_preference(monkeypatch):
    """On a GPU, "auto" picks Flux's bf16 (it overflows in fp16) and fp16 for the others, as ComfyUI's own model
    definitions do; bf16 only where the device has it; fp32 on the CPU."""
    import torch

    from diffusers_stages import host
    from diffusers_stages.engine.families.flux import FLUX
    from diffusers_stages.engine.families.stable_diffusion_xl import STABLE_DIFFUSION_XL

    assert host.default_dtype(FLUX) == torch.float32  # this machine: CPU
    monkeypatch.setattr(host, "compute_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert (host.default_dtype(FLUX), host.default_dtype(STABLE_DIFFUSION_XL)) == (torch.bfloat16, torch.float16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert host.default_dtype(FLUX) == torch.float16


def test_model_handles_show_the_host_their_patcher():
    """ComfyUI v0.2x+'s default RAM-pressure cache recognises outputs holding a ModelPatcher by a `patcher`
    attribute (and drops an old workflow's first): every model handle exposes the one its residency holds."""
    from diffusers_stages.engine.components import ControlNet, Denoiser, TextEncoder, Vae
    from diffusers_stages.host import Residency

    held = object()
    handles = (Denoiser(None, None, "", residency=Residency([], held)), TextEncoder(None, (), "", Residency([], held)),
               Vae(None, None, "", Residency([], held)), ControlNet(None, None, "", Residency([], held)))
    for handle in handles:
        assert handle.patcher is held
    assert Denoiser(None, None, "").patcher is None and Vae(None, None, "", Residency([])).patcher is None
