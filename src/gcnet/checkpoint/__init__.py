"""Read, check, load, save and download checkpoints (the original's published files and our own).

- :mod:`.io`: safe ``weights_only`` reading, atomic saving, model unwrapping;
- :mod:`.structure`: the backbone a state dict holds, to name a mismatched checkpoint plainly;
- :mod:`.remote`: the one fetch-and-verify path for every remote file (checkpoints and ImageNet
  backbones): URLs of named weights, the local cache, sha256 checks;
- :mod:`.load`: :func:`load_checkpoint` with strict key/shape checks, or fine-tuning's partial load
  (:func:`load_for_finetuning`: what fits, class-dependent layers afresh, one summary).
"""

from gcnet.checkpoint.io import (
    CheckpointError,
    atomic_copy,
    atomic_write,
    read_checkpoint,
    safe_torch_load,
    save_checkpoint,
    unwrap_model,
)
from gcnet.checkpoint.load import (
    FinetuneReport,
    class_dependent_keys,
    load_checkpoint,
    load_for_finetuning,
    load_state_dict_checked,
    recorded_class_names,
)
from gcnet.checkpoint.remote import (
    PRETRAINED_URLS,
    default_cache_dir,
    download,
    resolve_url,
    sha256_prefix_in_name,
)
from gcnet.checkpoint.structure import BackboneStructure, backbone_structure

__all__ = [
    "BackboneStructure",
    "CheckpointError",
    "FinetuneReport",
    "PRETRAINED_URLS",
    "atomic_copy",
    "atomic_write",
    "backbone_structure",
    "class_dependent_keys",
    "default_cache_dir",
    "download",
    "load_checkpoint",
    "load_for_finetuning",
    "load_state_dict_checked",
    "read_checkpoint",
    "recorded_class_names",
    "resolve_url",
    "safe_torch_load",
    "save_checkpoint",
    "sha256_prefix_in_name",
    "unwrap_model",
]
