"""Idempotent, non-interactive set-up. ComfyUI-Manager runs it (cwd = the pack folder) after requirements.txt.

    python install.py          # the pack's dependencies (+ torch if missing, pinned; never upgraded)
    python install.py --dev    # + test and lint tools

It never downloads model weights. The CLIP tokenizer vocabulary for single-file checkpoints comes from the
`open-clip-torch` wheel, installed without its dependencies (they would pull torchvision and maybe a CUDA torch).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Only used when torch is missing (a headless install). Pinned: an unpinned torch may pull a multi-GB CUDA build.
TORCH_SPEC = os.environ.get("DIFFUSERS_STAGES_TORCH", "torch==2.13.0")
DEV_TOOLS = [
    "pytest>=8", "ruff>=0.6",
    "aiohttp>=3.9",  # the live-host tier's websocket client
    # the real workflow corpus (MIT, JSON only) the converter is tested on
    "comfyui-workflow-templates-json==0.1.123", "comfyui-subgraph-blueprints==0.0.13",
]


def pip(*args: str) -> None:
    print("+ pip", " ".join(args), flush=True)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args])


def has_clip_vocabulary() -> bool:
    spec = importlib.util.find_spec("open_clip")
    return bool(spec and spec.submodule_search_locations and any(
        os.path.isfile(os.path.join(p, "bpe_simple_vocab_16e6.txt.gz")) for p in spec.submodule_search_locations))


def main(argv: list[str]) -> int:
    if importlib.util.find_spec("torch") is None:
        pip(TORCH_SPEC)
    pip("-r", os.path.join(HERE, "requirements.txt"))
    if not has_clip_vocabulary():
        pip("--no-deps", "open-clip-torch")
    if "--dev" in argv:
        pip(*DEV_TOOLS)
        # ComfyUI's own quantization kernels (Apache-2.0), which the tests check our int8 dequantization against;
        # without its dependencies, which ask for a torch of their choosing
        pip("--no-deps", "comfy-kitchen==0.2.31")
    print("Diffusers Stages: set-up complete.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
