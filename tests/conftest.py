"""Shared fixtures: tiny models built once per session, and a helper that runs our node graph."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub
# model-file digests the runner caches across processes go to a folder of the test run, not the user's ~/.cache
os.environ.setdefault("DIFFUSERS_STAGES_CACHE_DIR", __import__("tempfile").mkdtemp(prefix="ds-test-cache-"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def models_root(tmp_path_factory):
    from diffusers_stages import host
    from diffusers_stages.tiny.models import write_models

    root = tmp_path_factory.mktemp("models")
    paths = write_models(str(root))
    host.set_models_dir(str(root))
    return {"root": str(root), **paths}


@pytest.fixture(scope="session")
def nodes(models_root):
    from diffusers_stages.nodes import NODE_CLASS_MAPPINGS

    return {node_id: cls() for node_id, cls in NODE_CLASS_MAPPINGS.items()}


class Graph:
    """Runs our nodes the way a txt2img / img2img workflow wires them."""

    def __init__(self, nodes, model: str | None, parts: tuple | None = None):
        """``model``: a Load Diffusers Model entry; or ``parts`` = (denoiser, text_encoder, vae, scheduler) from
        component loaders."""
        self.nodes = nodes
        self.denoiser, self.text_encoder, self.vae, self.default_scheduler = parts or nodes["DS_LoadModel"].execute(
            model=model, repo_id="", dtype="fp32")

    def in_fresh_memory(self) -> Graph:
        """The same graph with every weight copied into memory of its own. safetensors maps tensors in place, at
        their offset in the file, and torch's CPU kernels round differently by a weight's address alignment
        (~1e-6 after a few steps). Two files holding equal weights at other offsets (a diffusers folder, a
        single-file checkpoint, split files) therefore give images that differ by that much; compared in fresh
        memory, as any GPU load places them, they are equal. Pipeline comparisons need no copy: the pipeline
        maps the very same file."""
        import copy
        import dataclasses

        def moved(handle):
            return handle if handle is None else dataclasses.replace(handle, module=copy.deepcopy(handle.module))

        text = dataclasses.replace(self.text_encoder, parts=tuple(
            dataclasses.replace(part, module=copy.deepcopy(part.module)) for part in self.text_encoder.parts))
        return Graph(self.nodes, None, (moved(self.denoiser), text, moved(self.vae), self.default_scheduler))

    def encode(self, text: str, clip_skip: int = 0):
        return self.nodes["DS_TextEncode"].execute(text_encoder=self.text_encoder, text=text, clip_skip=clip_skip)[0]

    def scheduler(self, sampler: str, schedule: str):
        if sampler == schedule == "model default":
            return self.default_scheduler
        return self.nodes["DS_Scheduler"].execute(scheduler=self.default_scheduler, sampler_name=sampler,
                                                  schedule=schedule)[0]

    def guider(self, prompt, negative, cfg=7.5, rescale=0.0, start=0.0, end=1.0, clip_skip=0):
        return self.nodes["DS_CFGGuider"].execute(
            positive=self.encode(prompt, clip_skip), negative=self.encode(negative, clip_skip), cfg=cfg,
            guidance_rescale=rescale, start_percent=start, end_percent=end)[0]

    def empty(self, width=64, height=64, batch=1):
        return self.nodes["DS_EmptyLatent"].execute(denoiser=self.denoiser, width=width, height=height,
                                                    batch_size=batch)[0]

    def denoise(self, guider, scheduler, latent, seed=0, steps=4, denoise=1.0):
        return self.nodes["DS_Denoise"].execute(denoiser=self.denoiser, guider=guider, scheduler=scheduler,
                                                latent=latent, seed=seed, steps=steps, denoise=denoise)[0]

    def decode(self, latent):
        return self.nodes["DS_VAEDecode"].execute(vae=self.vae, samples=latent)[0]

    def encode_image(self, image):
        return self.nodes["DS_VAEEncode"].execute(vae=self.vae, pixels=image)[0]

    def txt2img(self, prompt="a photo of a cat", negative="blurry", sampler="euler", schedule="normal", seed=0,
                steps=4, width=64, height=64, batch=1, cfg=7.5, rescale=0.0):
        latent = self.denoise(self.guider(prompt, negative, cfg, rescale), self.scheduler(sampler, schedule),
                              self.empty(width, height, batch), seed, steps)
        return latent, self.decode(latent)


@pytest.fixture(scope="session")
def sd1_graph(nodes):
    return Graph(nodes, "diffusers/tiny-sd15")


def load_pipeline(class_name: str, folder: str, **components):
    """A diffusers pipeline from a local folder, quiet, remembering the scheduler it ships (tests swap it)."""
    import diffusers

    pipe = getattr(diffusers, class_name).from_pretrained(folder, local_files_only=True, **components)
    pipe.set_progress_bar_config(disable=True)
    pipe.shipped_scheduler = pipe.scheduler
    return pipe


@pytest.fixture(scope="session")
def sd1_pipe(models_root):
    return load_pipeline("StableDiffusionPipeline", models_root["sd1_folder"])


def bchw(image: torch.Tensor) -> torch.Tensor:
    """Our IMAGE [B,H,W,C] as a pipeline's 'pt' output [B,C,H,W]."""
    return image.movedim(-1, 1)
