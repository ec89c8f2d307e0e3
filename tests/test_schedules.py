"""Core's schedules on every sampler the maths allows: karras/exponential for samplers diffusers has no flag for
(euler_ancestral) and beta, linear_quadratic, kl_optimal, which diffusers lacks, given as explicit sigmas.

* The mechanism that hands explicit sigmas to a scheduler is bit-exact against diffusers where diffusers has the
  same schedule natively (DPMSolverMultistep × karras, Euler × karras, EulerAncestral × normal).
* The sigmas themselves are checked against independent computations of the published formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import bchw

from diffusers_stages.engine import sigmas as explicit
from diffusers_stages.engine.errors import StageError
from diffusers_stages.engine.schedulers import build_scheduler

STEPS = 6


def scheduler_for(sd1_graph, sampler, schedule):
    return build_scheduler(sd1_graph.scheduler(sampler, schedule), 0)


def image(sd1_graph, scheduler_spec, seed=3):
    guider = sd1_graph.guider("a photo of a cat", "blurry")
    return bchw(sd1_graph.decode(sd1_graph.denoise(guider, scheduler_spec, sd1_graph.empty(), seed=seed, steps=STEPS)))


@pytest.mark.parametrize("sampler, flag", [("dpmpp_2m", "use_karras_sigmas"), ("dpmpp_2m_sde", "use_karras_sigmas"),
                                           ("dpmpp_3m_sde", "use_exponential_sigmas")])
def test_explicit_sigmas_equal_diffusers_native_schedule(sd1_graph, monkeypatch, sampler, flag):
    """The same schedule, once from diffusers' own flag and once written in by our explicit-sigma path: the same
    scheduler state and, through the whole graph, the same image bit for bit."""
    schedule = "karras" if flag == "use_karras_sigmas" else "exponential"
    native_spec = sd1_graph.scheduler(sampler, schedule)
    assert dict(native_spec.config)[flag] and not native_spec.explicit_schedule
    native = build_scheduler(native_spec, 0)
    native.set_timesteps(STEPS)
    written = build_scheduler(sd1_graph.scheduler(sampler, "normal"), 0)
    written.set_timesteps(STEPS)
    explicit.give_sigmas(written, native.sigmas.double().numpy())  # timesteps from our log-sigma interpolation
    assert torch.equal(written.sigmas, native.sigmas)
    if schedule == "karras":  # (DPMSolverMultistep maps exponential sigmas to timesteps its own way: 998, not 999)
        assert torch.equal(written.timesteps, native.timesteps)
    import dataclasses

    forced = dataclasses.replace(sd1_graph.scheduler(sampler, "normal"), explicit_schedule=schedule)
    assert torch.equal(image(sd1_graph, forced), image(sd1_graph, native_spec))


def test_euler_ancestral_karras_uses_diffusers_euler_karras_schedule(sd1_graph):
    """euler_ancestral × karras/exponential: exactly the sigmas and timesteps of diffusers' euler × karras."""
    for schedule in ("karras", "exponential"):
        ours = scheduler_for(sd1_graph, "euler_ancestral", schedule)
        ours.set_timesteps(STEPS)
        explicit.apply_schedule(ours, schedule, STEPS)
        euler = scheduler_for(sd1_graph, "euler", schedule)  # diffusers' own flag
        euler.set_timesteps(STEPS)
        assert torch.equal(ours.sigmas, euler.sigmas) and torch.equal(ours.timesteps, euler.timesteps)


def model_table(sd1_graph) -> np.ndarray:
    scheduler = scheduler_for(sd1_graph, "euler", "normal")
    return np.array([math.sqrt((1 - a) / a) for a in scheduler.alphas_cumprod.tolist()])


def test_euler_ancestral_karras_and_exponential_follow_the_formulas(sd1_graph):
    table = model_table(sd1_graph)
    low, high = table[0], table[-1]
    for schedule in ("karras", "exponential"):
        spec = sd1_graph.scheduler("euler_ancestral", schedule)
        assert spec.explicit_schedule == schedule
        scheduler = build_scheduler(spec, 0)
        scheduler.set_timesteps(STEPS)
        explicit.apply_schedule(scheduler, schedule, STEPS)
        if schedule == "karras":  # Karras et al. 2022, eq. 5, rho = 7
            expected = [(high ** (1 / 7) + i / (STEPS - 1) * (low ** (1 / 7) - high ** (1 / 7))) ** 7
                        for i in range(STEPS)]
        else:  # evenly spaced in log sigma
            expected = [math.exp(math.log(high) + i / (STEPS - 1) * (math.log(low) - math.log(high)))
                        for i in range(STEPS)]
        assert np.allclose(scheduler.sigmas.numpy(), [*expected, 0.0], rtol=1e-4)
        assert torch.isfinite(image(sd1_graph, spec)).all()


def test_beta_linear_quadratic_and_kl_optimal_follow_the_formulas(sd1_graph):
    from scipy.special import betaincinv

    table = model_table(sd1_graph)
    last = len(table) - 1
    # beta (ComfyUI's): Beta(0.6, 0.6) quantiles of 1 - i/n pick timesteps of the table, repeats dropped
    picked = []
    for i in range(STEPS):
        t = int(round(betaincinv(0.6, 0.6, 1 - i / STEPS) * last))
        if not picked or picked[-1] != t:
            picked.append(t)
    expected = {"beta": [table[t] for t in picked] + [0.0]}
    # linear-quadratic (Movie Gen): noise levels 0 .. 0.025 linearly over n/2 steps, then a quadratic to 1
    half, threshold = STEPS // 2, 0.025
    levels = []
    for i in range(STEPS + 1):
        if i < half:
            levels.append(threshold * i / half)
        elif i < STEPS:
            q = STEPS - half  # the quadratic through (half, threshold) with slope threshold/half there, ending at 1
            a = (half - threshold * STEPS) / (half * q * q)
            levels.append(a * (i - half) ** 2 + threshold / half * (i - half) + threshold)
        else:
            levels.append(1.0)
    expected["linear_quadratic"] = [(1 - level) * table[-1] for level in levels]
    # KL-optimal (Align Your Steps): linear in arctan(sigma)
    expected["kl_optimal"] = [math.tan(math.atan(table[-1]) + i / (STEPS - 1) * (math.atan(table[0]) -
                                                                               math.atan(table[-1])))
                              for i in range(STEPS)] + [0.0]
    for sampler in ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        for schedule, values in expected.items():
            spec = sd1_graph.scheduler(sampler, schedule)
            scheduler = build_scheduler(spec, 0)
            scheduler.set_timesteps(STEPS)
            explicit.apply_schedule(scheduler, schedule, STEPS)
            assert np.allclose(scheduler.sigmas.numpy(), values, rtol=1e-4, atol=1e-6), (sampler, schedule)
    for schedule in expected:
        result = image(sd1_graph, sd1_graph.scheduler("euler", schedule))
        assert torch.isfinite(result).all()
        assert not torch.equal(result, image(sd1_graph, sd1_graph.scheduler("euler", "normal")))


@pytest.mark.parametrize("sampler, schedule", [("ddim", "karras"), ("heun", "beta"), ("uni_pc", "kl_optimal"),
                                               ("lcm", "linear_quadratic")])
def test_a_schedule_a_sampler_cannot_take_is_refused(nodes, sd1_graph, sampler, schedule):
    node = nodes["DS_Scheduler"]
    message = node.VALIDATE_INPUTS(sampler_name=sampler, schedule=schedule)
    assert f"Scheduler (Diffusers) › schedule: the '{schedule}' schedule cannot be used with the" in message
    assert "takes no explicit sigmas" in message and "euler_ancestral" in message
    with pytest.raises(StageError, match="a sampler that takes"):
        node.execute(scheduler=sd1_graph.default_scheduler, sampler_name=sampler, schedule=schedule)
