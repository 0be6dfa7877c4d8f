"""``perf/mgfr_memory_plan.py``: the memory plan's activation count on the meta device
agrees with real CPU tensors, and its table behaves as memory does (checkpointing and
8-bit AdamW shrink what they should, a bigger card never fits a smaller batch)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))


@pytest.mark.slow
def test_meta_count_matches_real_tensors_and_the_table_is_consistent():
    import argparse

    import mgfr_memory_plan as mp
    import torch
    torch.set_num_threads(1)
    real = mp.measure_step("tiny", "cpu", torch.float32, 1, False, 2, 1)
    meta = mp.measure_step("tiny", "meta", torch.float32, 1, False, 2, 1)
    assert meta["step"]["act"] == pytest.approx(real["step"]["act"], rel=0.05)
    assert meta["vae_encode"]["act"] == pytest.approx(real["vae_encode"]["act"], rel=0.05)
    # flash-like attention keeps less than the math kernel's N x N matrices
    math_ = mp.measure_step("tiny", "meta", torch.float32, 1, False, 2, 1, flash=False)
    assert math_["step"]["act"] > meta["step"]["act"]

    args = argparse.Namespace(preset="tiny", resolution=None, refs=1, stages=[1],
                              precisions=["fp32", "bf16"], cards=[24, 40, 80],
                              overhead_gb=1.5, fragmentation=0.1, math_attention=False)
    r = mp.plan(args)
    rows = {(x["precision"], x["checkpointing"], x["optimizer"]): x for x in r["rows"]}
    for prec in ("fp32", "bf16"):
        off, on = rows[(prec, False, "AdamW")], rows[(prec, True, "AdamW")]
        assert on["activation_per_sample_gb"] < off["activation_per_sample_gb"]
        assert rows[(prec, False, "8-bit AdamW")]["trainable_state_gb"] < \
            off["trainable_state_gb"]
        for x in (off, on):
            assert x["batch_24gb"] <= x["batch_40gb"] <= x["batch_80gb"]
    assert rows[("bf16", False, "AdamW")]["activation_per_sample_gb"] < \
        rows[("fp32", False, "AdamW")]["activation_per_sample_gb"]
    assert rows[("bf16", False, "AdamW")]["frozen_weights_gb"] < \
        rows[("fp32", False, "AdamW")]["frozen_weights_gb"]
    assert "| stage | precision |" in mp.to_markdown(r)
