"""Build, verify and export the identity-grouped Reface-HQ face dataset.

Public API (imports are light; models load lazily inside the stages)::

    from reface_hq import BuildConfig, build, FolderSource, URLListSource, HFSource
    stats = build(BuildConfig(sources=[FolderSource("photos", identity="folder")], out="ds"))
    ds = reface_hq.to_hf_dataset("ds")                 # datasets.Dataset
    torch_ds = reface_hq.FaceReferenceDataset("ds")    # (target, references, identity, caption)
    reface_hq.export("ds", "ds_export")                # HF Parquet + card, WebDataset shards
"""

__version__ = "0.1.0"

from .build import BuildConfig, build, read_exclusion
from .dataset import FaceReferenceDataset, load_manifest, to_hf_dataset, verify
from .export import export, push_to_hub
from .sources import FolderSource, HFSource, URLListSource, parse_source

__all__ = [
           "BuildConfig",
           "FaceReferenceDataset",
           "FolderSource",
           "HFSource",
           "URLListSource",
           "build",
           "export",
           "load_manifest",
           "parse_source",
           "push_to_hub",
           "read_exclusion",
           "to_hf_dataset",
           "verify",
]
