"""Shared base layer: pretrained-asset resolver, safe image I/O, atomic writes.

Every package of the toolkit may import ``reface_core``; ``reface_core`` imports none of
them, so the one-way import rule of the design (faces, degradations -> captioning ->
reface_hq / mgfr -> benchmarks) keeps holding.
"""

__version__ = "0.1.0"

# No import may reach the network (bitsandbytes asks the Hugging Face Hub for a kernel).
from .offline import install as _install_offline_imports  # noqa: E402

_install_offline_imports()
