"""Prompt syntax and text encoding: against diffusers' encode_prompt and an independent computation."""

from __future__ import annotations

import pytest
import torch

from diffusers_stages.engine.prompt import parse_weights, token_windows


@pytest.mark.parametrize("text, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat) sitting", [("a ", 1.0), ("cat", 1.1), (" sitting", 1.0)]),
    ("a (cat:1.5) sitting", [("a ", 1.0), ("cat", 1.5), (" sitting", 1.0)]),
    ("((cat))", [("cat", pytest.approx(1.21))]),
    ("(a (cat:2):0.5)", [("a ", 0.5), ("cat", 1.0)]),
    ("a \\(cat\\) photo", [("a (cat) photo", 1.0)]),
    ("unmatched (paren", [("unmatched (paren", 1.0)]),
    ("ratio (16:9) image", [("ratio ", 1.0), ("16", 9.0), (" image", 1.0)]),
    ("(time: noon)", [("time: noon", pytest.approx(1.1))]),
    ("", []),
])
def test_parse_weights(text, expected):
    assert parse_weights(text) == expected


def test_full_tokenizer_matches_openai_clip():
    from diffusers_stages.engine.clip_vocab import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == 49408
    # ids of OpenAI's SimpleTokenizer for this string
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_short_prompt_equals_encode_prompt(sd1_graph, sd1_pipe):
    for text in ("a photo of a cat", "", "a (literal) word: still plain? no, weighted"):
        ours = sd1_graph.encode(text).embeds
        ref, _ = sd1_pipe.encode_prompt(text, "cpu", 1, False)
        if "(" in text:
            assert not torch.equal(ours, ref)  # (literal) is weighted 1.1, as ComfyUI reads it
        else:
            assert torch.equal(ours, ref)


def _window(tokenizer, ids):
    ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    return ids + [tokenizer.pad_token_id] * (77 - len(ids))


def test_clip_skip_against_reference(sd1_graph, sd1_pipe):
    tok, te = sd1_pipe.tokenizer, sd1_pipe.text_encoder
    ids = tok("a photo of a cat", add_special_tokens=False).input_ids
    with torch.no_grad():
        for skip in (1, 2):
            hidden = te(torch.tensor([_window(tok, ids)]), output_hidden_states=True).hidden_states[-(skip + 1)]
            ref = te.final_layer_norm(hidden)
            assert torch.equal(sd1_graph.encode("a photo of a cat", clip_skip=skip).embeds, ref)
        last = te(torch.tensor([_window(tok, ids)]))[0]
    assert not torch.equal(sd1_graph.encode("a photo of a cat", clip_skip=1).embeds, last)


def test_weighted_prompt_against_reference(sd1_graph, sd1_pipe):
    """(cat:1.5) scales the cat tokens' distance from the empty prompt's encoding, position by position."""
    tok, te = sd1_pipe.tokenizer, sd1_pipe.text_encoder
    a, cat, c = (tok(s, add_special_tokens=False).input_ids for s in ("a photo of a", "cat", "on a mat"))
    with torch.no_grad():
        z = te(torch.tensor([_window(tok, a + cat + c)]))[0]
        empty = te(torch.tensor([_window(tok, [])]))[0]
    weights = torch.ones(77)
    weights[1 + len(a):1 + len(a) + len(cat)] = 1.5
    ref = empty + (z - empty) * weights[None, :, None]
    ours = sd1_graph.encode("a photo of a (cat:1.5) on a mat").embeds
    assert torch.equal(ours, ref)


def test_long_prompt_is_chunked(sd1_graph, sd1_pipe):
    tok, te = sd1_pipe.tokenizer, sd1_pipe.text_encoder
    text = ", ".join(f"detail number {i}" for i in range(40))  # well over 75 tokens
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) > 150
    windows = [ids[i:i + 75] for i in range(0, len(ids), 75)]
    with torch.no_grad():
        ref = torch.cat([te(torch.tensor([_window(tok, w)]))[0] for w in windows], dim=1)
    ours = sd1_graph.encode(text).embeds
    assert ours.shape == (1, 77 * len(windows), te.config.hidden_size)
    assert torch.equal(ours, ref)
    # a long positive with a short negative still runs (the shorter is repeated to a common length)
    guider = sd1_graph.nodes["DS_CFGGuider"].execute(positive=sd1_graph.encode(text), negative=sd1_graph.encode(""),
                                                     cfg=7.0)[0]
    latent = sd1_graph.denoise(guider, sd1_graph.default_scheduler, sd1_graph.empty(), steps=2)
    assert torch.isfinite(latent["samples"]).all()


def test_windows_frame_every_chunk(sd1_pipe):
    tok = sd1_pipe.tokenizer
    text = "word " * 100
    n_tokens = len(tok(text, add_special_tokens=False).input_ids)
    windows = token_windows(tok, text)
    assert len(windows.ids) == -(-n_tokens // 75) > 1
    for row in windows.ids:
        assert len(row) == 77 and row[0] == tok.bos_token_id and tok.eos_token_id in row
