"""Vision-language backend: BLIP captions and BLIP VQA answers, through ``transformers``.

The Salesforce BLIP checkpoints (``Salesforce/blip-image-captioning-base``,
``Salesforce/blip-vqa-base``; BLIP-2 ``Salesforce/blip2-opt-2.7b``) load with
``transformers``' own BLIP classes. ``salesforce-lavis``, the original code base, pins an
old torch and transformers and cannot be installed beside ours, so it is not used.

Weights are folders found through the asset resolver (``blip-caption-base``,
``blip-vqa-base``, ``blip2-opt-2.7b``): pass a folder path, or set
``REFACE_ASSET_BLIP_VQA_BASE``, or place the Hugging Face download under
``$REFACE_HOME/hf/``. Nothing is downloaded.

How attributes are asked: one question per attribute (the vocabulary's ``question``).
In ``rank`` mode (the default) the answer decoder scores every candidate answer
(``yes``/``no``, or the attribute's candidate words) given the image and the question;
the softmax over the candidates' summed log-likelihoods is the confidence, and
candidates naming the same value (``grey``/``gray``) pool their probability. In
``generate`` mode the model answers freely (greedy) and the text is parsed with
:func:`parse_answer`; an answer that names no value leaves the attribute out and is
reported in the result's ``error``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from ..attribute_values import Attributes, AttributeValue
from ..vocabulary import VOCABULARY, get_spec
from .base import AttributeExtractor, ExtractionResult, FaceSample

#: The attributes asked by default: the ones the MGFR paper's figures talk about.
DEFAULT_VLM_ATTRIBUTES: tuple[str, ...] = (
    "gender", "smiling", "big_eyes", "big_nose", "big_lips", "beard", "mustache",
    "pale_skin", "heavy_makeup", "eyeglasses", "wearing_lipstick", "wearing_earrings",
    "wearing_hat", "hair_color", "hair_style", "bald")

_YES_NO = {"yes": True, "no": False}


def question_set(attributes: Sequence[str]) -> list[tuple[str, str, dict[str, object]]]:
    """(attribute, question, {candidate answer: value}) for each askable attribute."""
    out = []
    for name in attributes:
        spec = get_spec(name)
        if not spec.question:
            raise ValueError(f"attribute {name!r} has no VQA question in the vocabulary; "
                             f"askable: {', '.join(a for a in VOCABULARY if VOCABULARY[a].question)}")
        candidates = dict(_YES_NO) if spec.kind == "binary" else dict(spec.answers)
        out.append((name, spec.question, candidates))
    return out


def parse_answer(name: str, text: str):
    """The value a free-text answer gives for attribute ``name``, or None.

    Binary: the first ``yes``/``no`` word (``"yes, she is"`` -> True). Categorical: the
    first word or two-word phrase that is a candidate answer (``"she is a woman"`` ->
    ``"female"``; ``"blonde"`` -> ``"blond"``).
    """
    spec = get_spec(name)
    words = re.findall(r"[a-z]+", text.lower())
    if spec.kind == "binary":
        for w in words:
            if w in _YES_NO:
                return _YES_NO[w]
        return None
    answers = spec.answers
    for i, w in enumerate(words):
        pair = " ".join(words[i:i + 2])
        if pair in answers:
            return answers[pair]
        if w in answers:
            return answers[w]
    return None


def pick_device(device: str = "auto"):
    import torch
    if device != "auto":
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device {device!r}: not a torch device; use auto, cpu, cuda, "
                             "cuda:N or mps") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine")
        if chosen.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                         and torch.backends.mps.is_available()):
            raise ValueError(f"device {device!r}: MPS is not available on this machine")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _dtype(dtype: str, device):
    import torch
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16; got {dtype!r}") from None


def _face_pixels(sample: FaceSample) -> np.ndarray:
    return sample.face if sample.face is not None else sample.load()


def _load_pretrained(asset: str, path, model_cls, processor_cls, device, dtype):
    from reface_core.assets import resolve
    folder = resolve(asset, path)
    try:
        processor = processor_cls.from_pretrained(str(folder))
        model = model_cls.from_pretrained(str(folder), dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{folder}: not a loadable {model_cls.__name__} checkpoint for "
                         f"asset {asset!r} ({type(e).__name__}: {e})") from None
    return model.to(device).eval(), processor


class BlipExtractor(AttributeExtractor):
    """BLIP captions (``BlipForConditionalGeneration``) and VQA attributes
    (``BlipForQuestionAnswering``), batched, on the best available device.

    Args:
        vqa_model: folder of a BLIP VQA checkpoint (default: asset ``blip-vqa-base``);
            ``None`` with ``vqa=False`` skips it.
        caption_model: folder of a BLIP captioning checkpoint (default: asset
            ``blip-caption-base``).
        attributes: attributes to ask about (each needs a vocabulary question).
        vqa / caption: which of the two models to run.
        mode: ``"rank"`` (score candidate answers; confidences) or ``"generate"``
            (free answer, parsed).
        batch_size: images per forward pass.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a torch device string.
        dtype: ``"auto"`` (float16 on CUDA, else float32), ``"float32"``, ...
        caption_prompt: text the caption continues (BLIP's conditional captioning).
        max_new_tokens / num_beams: caption decoding (greedy by default: deterministic).
    """

    name = "vlm"
    vqa_asset = "blip-vqa-base"
    caption_asset = "blip-caption-base"

    def __init__(self, vqa_model: str | os.PathLike | None = None,
                 caption_model: str | os.PathLike | None = None, *,
                 attributes: Sequence[str] = DEFAULT_VLM_ATTRIBUTES, vqa: bool = True,
                 caption: bool = True, mode: str = "rank", batch_size: int = 8,
                 device: str = "auto", dtype: str = "auto",
                 caption_prompt: str = "a photography of", max_new_tokens: int = 30,
                 num_beams: int = 1):
        if mode not in ("rank", "generate"):
            raise ValueError(f"mode must be 'rank' or 'generate', got {mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not (vqa or caption):
            raise ValueError("the VLM backend needs vqa=True or caption=True")
        self.questions = question_set(attributes) if vqa else []
        self.mode, self.batch_size = mode, int(batch_size)
        self.caption_prompt = caption_prompt.strip()
        self.max_new_tokens, self.num_beams = int(max_new_tokens), int(num_beams)
        self.device = pick_device(device)
        self.dtype = _dtype(dtype, self.device)
        self._vqa = self._caption = None
        self._paths = {"vqa": str(vqa_model) if vqa_model else None,
                       "caption": str(caption_model) if caption_model else None}
        # Load eagerly: a missing checkpoint should fail before a long job starts.
        if vqa:
            self._vqa = self._load("vqa", vqa_model)
        if caption:
            self._caption = self._load("caption", caption_model)

    def _load(self, which: str, path):
        from transformers import (
            BlipForConditionalGeneration,
            BlipForQuestionAnswering,
            BlipProcessor,
        )
        if which == "vqa":
            return _load_pretrained(self.vqa_asset, path, BlipForQuestionAnswering,
                                    BlipProcessor, self.device, self.dtype)
        return _load_pretrained(self.caption_asset, path, BlipForConditionalGeneration,
                                BlipProcessor, self.device, self.dtype)

    def config(self) -> dict:
        return {"name": self.name, "models": self._paths, "mode": self.mode,
                "attributes": [q[0] for q in self.questions],
                "caption": self._caption is not None, "caption_prompt": self.caption_prompt,
                "max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                "dtype": str(self.dtype).replace("torch.", "")}

    # --- the two models ------------------------------------------------------------------
    def _pixels(self, processor, images: Sequence[np.ndarray]):
        # The safe loader hands out read-only arrays; torch wants writable memory.
        images = [im if im.flags.writeable else np.array(im) for im in images]
        batch = processor.image_processor(images=images, return_tensors="pt")
        return batch["pixel_values"].to(self.device, self.dtype)

    def captions(self, images: Sequence[np.ndarray]) -> list[str]:
        """One caption per image (greedy unless ``num_beams`` > 1)."""
        import torch
        model, processor = self._caption
        pixel_values = self._pixels(processor, images)
        kwargs = {}
        if self.caption_prompt:
            enc = processor.tokenizer([self.caption_prompt] * len(images), return_tensors="pt")
            kwargs = {"input_ids": enc["input_ids"].to(self.device),
                      "attention_mask": enc["attention_mask"].to(self.device)}
        with torch.inference_mode():
            out = model.generate(pixel_values=pixel_values, max_new_tokens=self.max_new_tokens,
                                 num_beams=self.num_beams, do_sample=False, **kwargs)
        texts = processor.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [self._clean_caption(t) for t in texts]

    def _clean_caption(self, text: str) -> str:
        text = " ".join(text.split())
        prompt = " ".join(self.caption_prompt.lower().split())
        if prompt and text.lower().startswith(prompt):
            rest = text[len(prompt):].strip()
            text = rest or text
        return text

    def _encode_questions(self, model, processor, pixel_values):
        """Image embeddings through the question encoder: one row per (image, question)."""
        tok = processor.tokenizer
        n_img, n_q = pixel_values.shape[0], len(self.questions)
        image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
        image_embeds = image_embeds.repeat_interleave(n_q, dim=0)
        image_mask = image_embeds.new_ones(image_embeds.shape[:2], dtype=_long())
        enc = tok([q for _, q, _ in self.questions] * n_img, padding=True, return_tensors="pt")
        q_ids, q_mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        q_embeds = model.text_encoder(input_ids=q_ids, attention_mask=q_mask,
                                      encoder_hidden_states=image_embeds,
                                      encoder_attention_mask=image_mask).last_hidden_state
        return q_embeds, q_mask

    def rank_answers(self, images: Sequence[np.ndarray]) -> list[list[dict[object, float]]]:
        """Per image, per question: {value: probability} over the candidate answers."""
        import torch
        model, processor = self._vqa
        tok, cfg = processor.tokenizer, model.config.text_config
        n_q = len(self.questions)
        with torch.inference_mode():
            q_embeds, q_mask = self._encode_questions(model, processor,
                                                      self._pixels(processor, images))
            # One decoder row per (image, question, candidate): [start] answer [end].
            rows, owners, values = [], [], []
            for row in range(q_embeds.shape[0]):
                _, _, candidates = self.questions[row % n_q]
                for answer, value in candidates.items():
                    ids = tok(answer, add_special_tokens=False)["input_ids"]
                    rows.append([cfg.bos_token_id] + ids + [cfg.sep_token_id])
                    owners.append(row)
                    values.append(value)
            width = max(len(r) for r in rows)
            dec = torch.full((len(rows), width), cfg.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                dec[i, :len(r)] = torch.tensor(r)
                mask[i, :len(r)] = 1
            dec, mask = dec.to(self.device), mask.to(self.device)
            index = torch.tensor(owners, device=self.device)
            logits = model.text_decoder(
                input_ids=dec, attention_mask=mask, encoder_hidden_states=q_embeds[index],
                encoder_attention_mask=q_mask[index], return_logits=True)
            logp = torch.log_softmax(logits.float(), dim=-1)
            target = dec[:, 1:]
            token_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * mask[:, 1:]
            scores = token_logp.sum(-1).cpu().numpy()
        out: list[list[dict[object, float]]] = [[{} for _ in range(n_q)] for _ in images]
        for row in sorted(set(owners)):
            picks = [i for i, o in enumerate(owners) if o == row]
            s = scores[picks]
            p = np.exp(s - s.max())
            p /= p.sum()
            pooled = out[row // n_q][row % n_q]
            for i, prob in zip(picks, p, strict=False):
                pooled[values[i]] = pooled.get(values[i], 0.0) + float(prob)
        return out

    def generate_answers(self, images: Sequence[np.ndarray]) -> list[list[tuple[str, float]]]:
        """Per image, per question: (free-text answer, its probability under the model)."""
        import torch
        model, processor = self._vqa
        tok, cfg = processor.tokenizer, model.config.text_config
        n_q = len(self.questions)
        with torch.inference_mode():
            q_embeds, q_mask = self._encode_questions(model, processor,
                                                      self._pixels(processor, images))
            start = torch.full((q_embeds.shape[0], 1), cfg.bos_token_id, device=self.device)
            out = model.text_decoder.generate(
                input_ids=start, eos_token_id=cfg.sep_token_id, pad_token_id=cfg.pad_token_id,
                encoder_hidden_states=q_embeds, encoder_attention_mask=q_mask,
                max_new_tokens=10, do_sample=False, num_beams=1, output_scores=True,
                return_dict_in_generate=True)
            step_logp = model.text_decoder.compute_transition_scores(
                out.sequences, out.scores, normalize_logits=True).float()
            generated = out.sequences[:, 1:]
            keep = (generated != cfg.pad_token_id).float()
            prob = torch.exp((step_logp * keep).sum(-1)).cpu().numpy()
        texts = tok.batch_decode(out.sequences, skip_special_tokens=True)
        answers = [[("", 0.0)] * n_q for _ in images]
        for row, (text, p) in enumerate(zip(texts, prob, strict=False)):
            answers[row // n_q][row % n_q] = (text.strip(), float(p))
        return answers

    # --- the interface -------------------------------------------------------------------
    def _attributes(self, images) -> tuple[list[Attributes], list[str | None]]:
        attrs: list[Attributes] = [{} for _ in images]
        errors: list[str | None] = [None] * len(images)
        if not self.questions:
            return attrs, errors
        if self.mode == "rank":
            for i, per_question in enumerate(self.rank_answers(images)):
                for (name, _, _), probs in zip(self.questions, per_question, strict=False):
                    value = max(probs, key=lambda v: (probs[v], str(v)))
                    attrs[i][name] = AttributeValue(value, min(1.0, probs[value]), self.name)
            return attrs, errors
        for i, per_question in enumerate(self.generate_answers(images)):
            unread = []
            for (name, _, _), (text, p) in zip(self.questions, per_question, strict=False):
                value = parse_answer(name, text)
                if value is None:
                    unread.append(f"{name}: {text!r}")
                else:
                    attrs[i][name] = AttributeValue(value, min(1.0, p), self.name)
            if unread:
                errors[i] = "unparsed answers: " + "; ".join(unread)
        return attrs, errors

    def extract(self, samples: Sequence[FaceSample]) -> list[ExtractionResult]:
        results: list[ExtractionResult] = [ExtractionResult() for _ in samples]
        ready = [i for i, s in enumerate(samples) if s.error is None]
        for i in range(len(samples)):
            if samples[i].error is not None:
                results[i].error = samples[i].error
        for start in range(0, len(ready), self.batch_size):
            chunk = ready[start:start + self.batch_size]
            images = [_face_pixels(samples[i]) for i in chunk]
            attrs, errors = self._attributes(images)
            caps = self.captions(images) if self._caption is not None else [None] * len(chunk)
            for i, a, e, c in zip(chunk, attrs, errors, caps, strict=False):
                results[i] = ExtractionResult(attributes=a, caption=c, error=e)
        return results


class Blip2Extractor(BlipExtractor):
    """The same questions and captions with BLIP-2 (``Blip2ForConditionalGeneration``, an OPT
    or other decoder-only language model behind a Q-Former), where its weights exist.

    One checkpoint does both: the caption continues ``caption_prompt``, and a question is
    asked as ``question_template`` (BLIP-2's own "Question: ... Answer:" form). Rank mode
    scores each candidate answer as the language model's log-likelihood of the answer
    tokens after the prompt. Registered as backend ``blip2``; its attributes carry source
    ``vlm``, so the precedence treats both VLMs alike.

    Args:
        model: folder of a BLIP-2 checkpoint (default: asset ``blip2-opt-2.7b``).
        question_template: how a question is put to the language model.
        Others as :class:`BlipExtractor`.
    """

    name = "vlm"
    asset = "blip2-opt-2.7b"

    def __init__(self, model: str | os.PathLike | None = None, *,
                 attributes: Sequence[str] = DEFAULT_VLM_ATTRIBUTES, vqa: bool = True,
                 caption: bool = True, mode: str = "rank", batch_size: int = 4,
                 device: str = "auto", dtype: str = "auto", caption_prompt: str = "a photo of",
                 question_template: str = "Question: {question} Answer:",
                 max_new_tokens: int = 30, num_beams: int = 1):
        if "{question}" not in question_template:
            raise ValueError(f"question_template must contain {{question}}, got {question_template!r}")
        self.question_template = question_template
        self._model_path = model
        super().__init__(None, None, attributes=attributes, vqa=vqa, caption=caption, mode=mode,
                         batch_size=batch_size, device=device, dtype=dtype,
                         caption_prompt=caption_prompt, max_new_tokens=max_new_tokens,
                         num_beams=num_beams)
        self._paths = {"blip2": str(model) if model else None}

    def _load(self, which: str, path):
        # One model serves both roles; load it once.
        loaded = getattr(self, "_blip2", None)
        if loaded is None:
            from transformers import Blip2ForConditionalGeneration, Blip2Processor
            loaded = _load_pretrained(self.asset, self._model_path, Blip2ForConditionalGeneration,
                                      Blip2Processor, self.device, self.dtype)
            self._blip2 = loaded
        return loaded

    def config(self) -> dict:
        cfg = super().config()
        cfg.update(family="blip2", question_template=self.question_template)
        return cfg

    def _prefix(self, model, processor, text: str) -> list[int]:
        """Image placeholder tokens, then the text's tokens (the processor's layout)."""
        image_ids = [model.config.image_token_id] * model.config.num_query_tokens
        return image_ids + list(processor.tokenizer(text)["input_ids"])

    def _embed(self, model, ids, features, owners):
        """Token embeddings with each row's image placeholders replaced by its image."""
        embeds = model.get_input_embeddings()(ids)
        mask = (ids == model.config.image_token_id).unsqueeze(-1)
        image = features[owners].to(embeds.dtype)
        return embeds.masked_scatter(mask, image)

    def _features(self, model, processor, images):
        pixel_values = self._pixels(processor, images)
        return model.get_image_features(pixel_values, return_dict=True).pooler_output

    def _padded(self, rows, pad_id, left: bool):
        import torch
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, sl] = torch.tensor(r)
            mask[i, sl] = 1
        return ids.to(self.device), mask.to(self.device)

    def captions(self, images: Sequence[np.ndarray]) -> list[str]:
        import torch
        model, processor = self._caption
        prefix = self._prefix(model, processor, self.caption_prompt)
        ids, mask = self._padded([prefix] * len(images), processor.tokenizer.pad_token_id, True)
        with torch.inference_mode():
            out = model.generate(pixel_values=self._pixels(processor, images), input_ids=ids,
                                 attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                 num_beams=self.num_beams, do_sample=False)
        new = out[:, ids.shape[1]:] if out.shape[1] > ids.shape[1] else out
        texts = processor.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [self._clean_caption(t) for t in texts]

    def rank_answers(self, images: Sequence[np.ndarray]) -> list[list[dict[object, float]]]:
        import torch
        model, processor = self._vqa
        tok = processor.tokenizer
        n_q = len(self.questions)
        rows, owners, spans, keys = [], [], [], []
        for img in range(len(images)):
            for q, (_, question, candidates) in enumerate(self.questions):
                prefix = self._prefix(model, processor,
                                      self.question_template.format(question=question))
                for answer, value in candidates.items():
                    answer_ids = tok(" " + answer, add_special_tokens=False)["input_ids"]
                    rows.append(prefix + answer_ids)
                    owners.append(img)
                    spans.append((len(prefix), len(prefix) + len(answer_ids)))
                    keys.append((img, q, value))
        with torch.inference_mode():
            features = self._features(model, processor, images)
            ids, mask = self._padded(rows, tok.pad_token_id, left=False)
            embeds = self._embed(model, ids, features, torch.tensor(owners, device=self.device))
            logits = model.language_model(inputs_embeds=embeds, attention_mask=mask).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            scores = []
            for r, (a, b) in enumerate(spans):
                positions = torch.arange(a, b, device=self.device)
                scores.append(float(logp[r, positions - 1, ids[r, positions]].sum()))
        scores = np.array(scores)
        out: list[list[dict[object, float]]] = [[{} for _ in range(n_q)] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for r, (img, q, _) in enumerate(keys):
            groups.setdefault((img, q), []).append(r)
        for (img, q), members in groups.items():
            p = np.exp(scores[members] - scores[members].max())
            p /= p.sum()
            for r, prob in zip(members, p, strict=False):
                value = keys[r][2]
                out[img][q][value] = out[img][q].get(value, 0.0) + float(prob)
        return out

    def generate_answers(self, images: Sequence[np.ndarray]) -> list[list[tuple[str, float]]]:
        import torch
        model, processor = self._vqa
        tok = processor.tokenizer
        n_q = len(self.questions)
        prefixes = [self._prefix(model, processor, self.question_template.format(question=q))
                    for _, q, _ in self.questions]
        rows = [prefixes[q] for _ in images for q in range(n_q)]
        ids, mask = self._padded(rows, tok.pad_token_id, left=True)
        pixel_values = self._pixels(processor, images).repeat_interleave(n_q, dim=0)
        with torch.inference_mode():
            out = model.generate(pixel_values=pixel_values, input_ids=ids, attention_mask=mask,
                                 max_new_tokens=10, do_sample=False, num_beams=1,
                                 output_scores=True, return_dict_in_generate=True)
            steps = len(out.scores)
            step_logp = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], 1)
            new = out.sequences[:, -steps:]
            chosen = step_logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
            keep = (new != tok.pad_token_id).float()
            prob = torch.exp((chosen * keep).sum(-1)).cpu().numpy()
        texts = tok.batch_decode(new, skip_special_tokens=True)
        answers = [[("", 0.0)] * n_q for _ in images]
        for row, (text, p) in enumerate(zip(texts, prob, strict=False)):
            answers[row // n_q][row % n_q] = (text.strip(), float(p))
        return answers


def _long():
    import torch
    return torch.long
