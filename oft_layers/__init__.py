"""oft_layers: block-diagonal Cayley-orthogonal adapters (OFT) and their constrained variant (COFT).

Torch only; works on any model with nn.Linear / nn.Conv2d layers::

    from oft_layers import inject, oft_parameters, project_after_step, merge, save_adapter
    model.requires_grad_(False)
    names = inject(model, [r".*attn\\d\\.to_[qkv]"], r=4, eps=1e-3, coft=True)
    opt = torch.optim.AdamW(oft_parameters(model), lr=1e-5)
    project_after_step(opt, model)      # COFT: project R after every step
    ...train...
    save_adapter(model, "adapter.safetensors"); merge(model)   # inference at the base model's cost
"""

from .cayley import CONVENTION, cayley, skew
from .coft import project_, project_after_step
from .config import OFTConfig
from .energy import hyperspherical_energy
from .functional import block_matmul, rotate_rows
from .inject import (
    count_trainable,
    enable_magnitude,
    inject,
    merge,
    oft_modules,
    oft_parameters,
    rotation_dof,
    strip,
    unmerge,
    wrap,
)
from .io import (
    adapter_file,
    adapter_metadata,
    adapter_state_dict,
    apply_adapter,
    load_adapter,
    load_adapter_state_dict,
    read_adapter,
    save_adapter,
    unpack_adapter,
)
from .layers import OFTConv2d, OFTLayer, OFTLinear
from .paths import (
    clear_path_cache,
    get_path_policy,
    load_path_cache,
    path_cache,
    set_path_policy,
    use_path_policy,
)
from .peft_format import PeftFormatError, is_peft_folder, load_peft, peft_adapter, save_peft

__all__ = [
    "CONVENTION",
    "OFTConfig",
    "OFTConv2d",
    "OFTLayer",
    "OFTLinear",
    "PeftFormatError",
    "adapter_file",
    "adapter_metadata",
    "adapter_state_dict",
    "apply_adapter",
    "block_matmul",
    "cayley",
    "clear_path_cache",
    "count_trainable",
    "rotation_dof",
    "enable_magnitude",
    "get_path_policy",
    "hyperspherical_energy",
    "inject",
    "is_peft_folder",
    "load_adapter",
    "load_adapter_state_dict",
    "load_path_cache",
    "load_peft",
    "merge",
    "oft_modules",
    "oft_parameters",
    "path_cache",
    "peft_adapter",
    "project_",
    "project_after_step",
    "read_adapter",
    "rotate_rows",
    "save_adapter",
    "save_peft",
    "set_path_policy",
    "skew",
    "strip",
    "unmerge",
    "unpack_adapter",
    "use_path_policy",
    "wrap",
]
