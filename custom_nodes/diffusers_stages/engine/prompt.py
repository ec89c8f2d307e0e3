"""ComfyUI prompt syntax: ``(word:1.2)`` weights and prompts longer than one 77-token window.

``parse_weights`` turns the text into (segment, weight) pairs the way ComfyUI reads it:
``(a)`` multiplies by 1.1, ``(a:w)`` by w, groups nest and multiply, ``\\(`` and ``\\)``
are literal parentheses, and an unmatched parenthesis is kept as text.

``token_windows`` tokenizes the segments and cuts the tokens into windows of 75,
each framed as ``[BOS] tokens [EOS] pad…`` to the encoder's 77 positions. A short,
unweighted prompt therefore gives exactly the ids a diffusers pipeline feeds its
text encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError

EMPHASIS = 1.1
MAX_NESTING = 64  # (((…))) deeper than this is a mistake, not emphasis: 1.1**64 is already a weight of 445


def _unescape(text: str) -> str:
    return text.replace("\\(", "(").replace("\\)", ")")


def _find_closing(text: str, start: int) -> int:
    """Index of the ')' matching the '(' at ``start``, or -1."""
    depth, i = 0, start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _split_weight(inner: str) -> tuple[str, float | None]:
    """'text:1.3' -> ('text', 1.3); text without a trailing number -> (text, None)."""
    head, sep, tail = inner.rpartition(":")
    if not sep:
        return inner, None
    try:
        weight = float(tail.strip())
    except ValueError:
        return inner, None
    if not math.isfinite(weight):
        raise InputError("text", f"the prompt weight '({inner})' is not a finite number.",
                         "write a weight such as (word:1.2); to keep the text literally, escape the parentheses as "
                         "\\( and \\).")
    return head, weight


def parse_weights(text: str, weight: float = 1.0, depth: int = 0) -> list[tuple[str, float]]:
    """Split ``text`` into (segment, weight) pairs; adjacent segments of equal weight are merged."""
    if depth > MAX_NESTING:
        raise InputError("text", f"the prompt nests parentheses more than {MAX_NESTING} levels deep.",
                         "remove the extra parentheses, or escape literal ones as \\( and \\).")
    pieces: list[tuple[str, float]] = []
    plain_start, i = 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "(":
            end = _find_closing(text, i)
            if end > 0:
                pieces.append((text[plain_start:i], weight))
                inner, explicit = _split_weight(text[i + 1:end])
                inner_weight = weight * (explicit if explicit is not None else EMPHASIS)
                if not math.isfinite(inner_weight):
                    raise InputError("text", "the nested prompt weights multiply to an infinite weight.",
                                     "use smaller weights.")
                pieces.extend(parse_weights(inner, inner_weight, depth + 1))
                i = plain_start = end + 1
                continue
        i += 1
    pieces.append((text[plain_start:], weight))

    merged: list[tuple[str, float]] = []
    for segment, w in pieces:
        segment = _unescape(segment) if "\\" in segment else segment
        if not segment:
            continue
        if merged and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + segment, w)
        else:
            merged.append((segment, w))
    return merged


@dataclass(frozen=True)
class TokenWindows:
    """Token ids [windows, 77] and the weight of each position (1.0 for BOS/EOS/padding)."""

    ids: list[list[int]]
    weights: list[list[float]]

    @property
    def is_weighted(self) -> bool:
        return any(w != 1.0 for row in self.weights for w in row)


def token_windows(tokenizer, text: str) -> TokenWindows:
    """Tokenize ComfyUI-syntax ``text`` into 77-token windows for a CLIP text encoder."""
    length = tokenizer.model_max_length
    per_window = length - 2
    tokens: list[tuple[int, float]] = []
    for segment, weight in parse_weights(text):
        ids = tokenizer(segment, add_special_tokens=False, truncation=False).input_ids
        tokens.extend((token, weight) for token in ids)

    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    windows_ids, windows_weights = [], []
    for start in range(0, max(len(tokens), 1), per_window):
        chunk = tokens[start:start + per_window]
        ids = [bos] + [t for t, _ in chunk] + [eos]
        weights = [1.0] + [w for _, w in chunk] + [1.0]
        padding = length - len(ids)
        windows_ids.append(ids + [pad] * padding)
        windows_weights.append(weights + [1.0] * padding)
    return TokenWindows(windows_ids, windows_weights)
