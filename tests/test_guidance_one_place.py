"""Guidance is decided in one place (engine/guidance.py, on the Guider's settings): the denoise loop and the nodes
never read a guider's scale, window or skip-layer settings, nor compare a cfg value themselves."""

from __future__ import annotations

import ast
import glob
import os

PACK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "custom_nodes", "diffusers_stages")
GUIDANCE_SETTINGS = {"scale", "rescale", "active_at", "skip_active_at", "guides", "skip_scale", "skip_start",
                     "skip_stop", "start_percent", "end_percent"}


def branches_on_guidance(path: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Attribute) and node.attr in GUIDANCE_SETTINGS and isinstance(node.ctx, ast.Load):
            found.append(f"line {node.lineno}: reads .{node.attr}")
        if isinstance(node, ast.Compare) and any(isinstance(side, ast.Name) and side.id in ("cfg", "scale")
                                                 for side in (node.left, *node.comparators)):
            found.append(f"line {node.lineno}: compares a guidance scale")
    return found


def test_the_denoise_loop_and_the_nodes_do_not_decide_guidance():
    files = [os.path.join(PACK, "engine", "denoise.py"), *glob.glob(os.path.join(PACK, "nodes", "*.py"))]
    wrong = {os.path.relpath(p, PACK): found for p in files if (found := branches_on_guidance(p))}
    assert wrong == {}


def test_the_rule_catches_a_branch(tmp_path):
    planted = tmp_path / "loop.py"
    planted.write_text("if guider.active_at(i, n) and cfg > 1.0:\n    x = guider.scale\n")
    assert len(branches_on_guidance(str(planted))) == 3
