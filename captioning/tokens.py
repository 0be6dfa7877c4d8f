"""Counting prompt tokens the way the text encoder will.

Stable Diffusion's text encoder reads at most 77 CLIP tokens, start and end markers
included; anything after that is silently cut off, so a prompt builder must count before
it is too late. Three ways to count, all returning the count *with* the two markers:

* any Hugging Face tokenizer object (``len(tokenizer(text).input_ids)``);
* ``"clip"``: the real CLIP byte-pair tokenizer, built in memory from the vocabulary file
  that the ``openai-clip`` PyPI package ships (asset ``clip-bpe-vocab``); the same BPE as
  the ``tokenizer/`` folder of every Stable Diffusion 1.x/2.x checkpoint;
* ``"words"``: a conservative word-level estimate for machines with neither: every word,
  number or punctuation run counts ``ceil(len / 4)`` tokens (at least 1). Real BPE gives
  common English words one token, so this over-counts and never lets a too-long prompt
  through.

``"auto"`` (the default of :class:`captioning.prompts.PromptBuilder`) takes ``"clip"``
when its vocabulary is installed, else ``"words"``.
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import re
from collections.abc import Callable

log = logging.getLogger(__name__)

#: CLIP's context length (start and end markers included).
CLIP_MAX_TOKENS = 77

TokenCounter = Callable[[str], int]
TokenizerLike = str | None | object

# The pieces CLIP's own pre-tokenizer splits text into (letters, single digits, other runs).
_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.UNICODE)


def count_words(text: str) -> int:
    """Conservative token estimate without a tokenizer (markers included)."""
    pieces = _PIECES.findall(text.lower())
    return 2 + sum(max(1, math.ceil(len(p) / 4)) for p in pieces)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level BPE maps every byte to a printable character; this is that table.
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=False))


@functools.lru_cache(maxsize=4)
def clip_tokenizer(path: str | None = None):
    """The CLIP BPE tokenizer as a ``transformers.CLIPTokenizer``, built in memory.

    ``path`` is the ``bpe_simple_vocab_16e6.txt.gz`` file; by default it is resolved through
    the asset ``clip-bpe-vocab`` (raises ``AssetNotFoundError`` when missing).
    """
    from transformers import CLIPTokenizer

    from reface_core.assets import resolve

    vocab_path = resolve("clip-bpe-vocab", path)
    with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # CLIP keeps the first 49152 - 256 - 2 merges (the file holds more); the vocabulary is
    # the 256 byte symbols, the same with the end-of-word mark, the merges, two markers.
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=list(merges),
                         model_max_length=CLIP_MAX_TOKENS)


def _hf_counter(tokenizer) -> TokenCounter:
    def count(text: str) -> int:
        # verbose=False: counting an over-long prompt is the point, not a mistake to warn of.
        return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])
    return count


def make_counter(tokenizer: TokenizerLike = "auto") -> tuple[TokenCounter, str]:
    """(count function, description) for ``tokenizer``: an object, ``"clip"``, ``"words"``,
    ``"auto"`` or ``None`` (same as ``"words"``)."""
    if tokenizer is None or tokenizer == "words":
        return count_words, "words"
    if isinstance(tokenizer, str):
        if tokenizer == "clip":
            return _hf_counter(clip_tokenizer()), "clip"
        if tokenizer == "auto":
            from reface_core.assets import find
            if find("clip-bpe-vocab") is not None:
                return _hf_counter(clip_tokenizer()), "clip"
            log.info("CLIP vocabulary not installed; counting prompt tokens with the "
                     "conservative word-level estimate")
            return count_words, "words"
        raise ValueError(f"tokenizer must be a tokenizer object, 'clip', 'words' or 'auto'; "
                         f"got {tokenizer!r}")
    if not callable(tokenizer):
        raise ValueError(f"tokenizer {tokenizer!r} is not callable (expected a Hugging Face "
                         "tokenizer)")
    return _hf_counter(tokenizer), type(tokenizer).__name__
