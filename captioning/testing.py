"""Tiny random-weight BLIP checkpoints built from config, for tests and perf scripts.

The way diffusers tests its pipelines: the real model classes, a few small layers, a
seeded init, and a word-piece vocabulary written here covering every question, candidate
answer and the caption prompt of the vocabulary. The folders it writes load through the
very same ``from_pretrained`` path as the Salesforce checkpoints, so the test exercises
what users run with real weights.
"""

from __future__ import annotations

import re
from pathlib import Path

from .vocabulary import ATTRIBUTES

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
_FILLER = ["a", "photography", "of", "photo", "woman", "man", "person", "with", "and",
           "hair", "face", "smiling", "glasses", "the", "is", "wearing", "young", "old"]


def tiny_vocabulary() -> list[str]:
    words = set(_FILLER) | {"yes", "no"}
    for spec in ATTRIBUTES:
        text = " ".join([spec.question or ""] + list(spec.answers))
        words |= set(re.findall(r"[a-z]+", text.lower()))
    punctuation = ["?", "'", ",", ".", "-"]
    return _SPECIAL + punctuation + sorted(words)


def build_tiny_blip(folder: str | Path, *, seed: int = 0, image_size: int = 32,
                    hidden: int = 32) -> tuple[Path, Path]:
    """Write a tiny BLIP VQA and a tiny BLIP captioning checkpoint under ``folder``.

    Returns (vqa_dir, caption_dir); each holds ``config.json``, safetensors weights and the
    processor (image processor + BERT tokenizer).
    """
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocabulary()
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, bos_token="[DEC]")
    ids = {t: i for i, t in enumerate(vocab)}
    text_config = dict(
        vocab_size=len(vocab), hidden_size=hidden, encoder_hidden_size=hidden,
        intermediate_size=2 * hidden, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=64, pad_token_id=ids["[PAD]"], bos_token_id=ids["[DEC]"],
        sep_token_id=ids["[SEP]"], eos_token_id=ids["[SEP]"])
    # BLIP initialises its vision tower with std 1e-10, which makes every image look the
    # same to a random model; a normal std lets tests see that answers depend on pixels.
    vision_config = dict(hidden_size=hidden, intermediate_size=2 * hidden,
                         num_attention_heads=2, num_hidden_layers=2, image_size=image_size,
                         patch_size=8, initializer_range=0.02)
    config = BlipConfig(text_config=text_config, vision_config=vision_config,
                        projection_dim=hidden)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer)
    out = []
    for offset, (cls, sub) in enumerate(((BlipForQuestionAnswering, "vqa"),
                                         (BlipForConditionalGeneration, "caption"))):
        torch.manual_seed(seed + offset)
        model = cls(config).eval()
        target = folder / sub
        model.save_pretrained(target, safe_serialization=True)
        processor.save_pretrained(target)
        out.append(target)
    vocab_file.unlink()
    return out[0], out[1]


def tiny_bpe_tokenizer(words):
    """A byte-level BPE tokenizer (the OPT/GPT-2 kind) whose merges spell ``words``."""
    from transformers import GPT2Tokenizer

    from .tokens import _bytes_to_unicode

    symbols = list(_bytes_to_unicode().values())
    space = _bytes_to_unicode()[ord(" ")]
    tokens = ["<pad>", "</s>", "<unk>"] + symbols
    merges: list[tuple[str, str]] = []
    seen = set(tokens)
    for word in sorted(set(words)):
        for spelled in (word, space + word):
            for i in range(1, len(spelled)):
                pair = (spelled[:i], spelled[i])
                if spelled[:i + 1] not in seen:
                    merges.append(pair)
                    tokens.append(spelled[:i + 1])
                    seen.add(spelled[:i + 1])
    vocab = {t: i for i, t in enumerate(tokens)}
    return GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>",
                         pad_token="<pad>", unk_token="<unk>")


def build_tiny_blip2(folder: str | Path, *, seed: int = 0, image_size: int = 32,
                     hidden: int = 32, num_query_tokens: int = 4) -> Path:
    """Write a tiny BLIP-2 (OPT language model) checkpoint with its processor; return it."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )

    folder = Path(folder)
    words = [w for w in tiny_vocabulary() if not w.startswith("[")] + ["Question", "Answer"]
    tokenizer = tiny_bpe_tokenizer(words)
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer, num_query_tokens=num_query_tokens)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = Blip2Config(
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden,
                           num_attention_heads=2, num_hidden_layers=2, image_size=image_size,
                           patch_size=8, initializer_range=0.02),
        qformer_config=dict(hidden_size=hidden, intermediate_size=2 * hidden,
                            num_attention_heads=2, num_hidden_layers=2,
                            encoder_hidden_size=hidden, vocab_size=len(tokenizer)),
        text_config=dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=hidden,
                         word_embed_proj_dim=hidden, ffn_dim=2 * hidden, num_attention_heads=2,
                         num_hidden_layers=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id),
        num_query_tokens=num_query_tokens, image_token_index=image_token)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    target = folder / "blip2"
    model.save_pretrained(target, safe_serialization=True)
    processor.save_pretrained(target)
    return target
