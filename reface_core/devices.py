"""The torch device a command was asked for, checked before any model is loaded."""

from __future__ import annotations


def device_problem(device: str) -> str | None:
    """Why torch cannot use ``device`` on this machine, or None when it can."""
    import torch
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        return str(e)
    if dev.type == "cpu" and dev.index not in (None, 0):
        return "there is one CPU device (cpu or cpu:0)"
    if dev.type not in ("cpu", "cuda", "mps"):
        return "use cpu, cuda, cuda:N or mps"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available here"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"only {torch.cuda.device_count()} CUDA device(s)"
    if dev.type == "mps" and not torch.backends.mps.is_available():
        return "no MPS device is available here"
    return None


def check_device(device: str) -> None:
    """Refuse a device torch cannot use here (``ValueError`` naming ``--device``)."""
    problem = device_problem(device)
    if problem:
        raise ValueError(f"--device {device}: {problem}")
