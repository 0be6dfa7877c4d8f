"""Checks on model folders before anything is allocated: numbers in their JSON files are
bounded, and a config must describe the weights file it sits beside.

A 1 KB edit to a ``config.json`` (``block_out_channels [32000, 64000, 64000]``) would
otherwise have diffusers allocate 16 GB before it notices that the weights do not fit. The
model is built on torch's ``meta`` device (shapes only, no memory) and its parameter shapes
are compared with the safetensors header (read without the tensors).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

#: Largest number a model config may hold (channels, vocabulary, positions ...).
MAX_CONFIG_NUMBER = 1 << 20
#: Keys that repeat layers: a large value builds that many modules, even on ``meta``.
LAYER_COUNTS = ("layers_per_block", "num_hidden_layers", "transformer_layers_per_block",
                "num_attention_heads", "attention_head_dim")
MAX_LAYER_COUNT = 64
MAX_LIST = 64
MAX_DEPTH = 8


def check_config_numbers(config, label: str) -> None:
    """Raise ``ValueError`` naming the key when a number is not finite or out of bounds."""

    def walk(value, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ValueError(f"{label}: {path} is nested too deeply")
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, (int, float)):
            limit = MAX_LAYER_COUNT if path.split(".")[-1].split("[")[0] in LAYER_COUNTS \
                else MAX_CONFIG_NUMBER
            if not (math.isfinite(value) and -MAX_CONFIG_NUMBER <= value <= limit):
                raise ValueError(f"{label}: {path} = {value!r} is out of bounds "
                                 f"(at most {limit})")
            return
        if isinstance(value, (list, tuple)):
            if len(value) > MAX_LIST:
                raise ValueError(f"{label}: {path} has {len(value)} entries (at most {MAX_LIST})")
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]", depth + 1)
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k), depth + 1)
            return
        raise ValueError(f"{label}: {path} holds a {type(value).__name__}")

    walk(config, "", 0)


def read_config(path: Path) -> dict:
    """A model folder's ``config.json``, bounded (see :func:`check_config_numbers`)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: must hold a JSON object")
    check_config_numbers(config, str(path))
    return config


def safetensors_shapes(folder: Path, name: str) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape from the header of ``folder/name`` (or its sharded index);
    None when there is no such safetensors file."""
    from safetensors import safe_open

    files = []
    if (folder / name).is_file():
        files = [folder / name]
    elif (folder / f"{name}.index.json").is_file():
        try:
            index = json.loads((folder / f"{name}.index.json").read_text())
            files = sorted({folder / Path(f).name for f in index["weight_map"].values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{folder / (name + '.index.json')}: not a weight index ({e})") \
                from None
    if not files:
        return None
    shapes = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    shapes[key] = tuple(st.get_slice(key).get_shape())
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{f}: not a readable safetensors file ({e})") from None
    return shapes


def check_fits_weights(build, shapes: dict[str, tuple[int, ...]], label: str) -> None:
    """Build the model on the meta device (``build()`` returns it) and refuse a config
    whose parameters differ from the weights file's tensors."""
    import torch

    try:
        with torch.device("meta"):
            model = build()
    except Exception as e:  # noqa: BLE001 - any constructor error is a bad config
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{label}: config.json does not build a model ({first})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in expected.items():
        if key in shapes and shapes[key] != shape:
            raise ValueError(f"{label}: config.json does not fit the weights ({key}: the "
                             f"config makes {list(shape)}, the file holds {list(shapes[key])})")
    n_config = sum(math.prod(s) for s in expected.values())
    n_file = sum(math.prod(s) for s in shapes.values())
    if n_config > 2 * n_file + 1_000_000:
        raise ValueError(f"{label}: config.json describes {n_config:,} parameters but the "
                         f"weights hold {n_file:,}")
