"""Layer groups: which group each parameter of any model belongs to, read from its module tree (the repeated
blocks, embeddings, top-level modules), for the health monitor's per-layer signals."""

from __future__ import annotations

from torch import nn

NORM_NAMES = ("norm", "ln", "layernorm", "layer_norm", "rms")


def find_blocks(model) -> tuple[str, list] | None:
    """The model's repeated blocks: the largest ModuleList (or Sequential) of two or more modules of one type,
    as (its dotted path, its children); None for a model without one."""
    best: tuple[str, list] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList | nn.Sequential):
            continue
        children = list(module.children())
        if (
            len(children) < 2
            or len({type(c) for c in children}) != 1
            or not any(True for _ in children[0].parameters())
        ):
            continue
        if best is None or len(children) > len(best[1]):
            best = (name, children)
    return best


class LayerGroups:
    """Parameter (or module) names -> layer groups, from the module tree of any model: each repeated block's
    direct children (`block3.attn`, `block3.mlp`; its norms share `block3.norm`), embeddings as `embedding`,
    everything else by its top-level child (`head`, `ln_f`)."""

    def __init__(self, model):
        found = find_blocks(model)
        self.prefix = found[0] + "." if found else None
        self.blocks = found[1] if found else []
        self.embeddings = {n for n, m in model.named_modules() if n and isinstance(m, nn.Embedding)}

    def __call__(self, name: str) -> str:
        if self.prefix is not None and name.startswith(self.prefix):
            rest = name[len(self.prefix) :].split(".")
            if len(rest) < 3:  # a parameter of the block itself
                return f"block{rest[0]}"
            part = rest[1]
            return f"block{rest[0]}.{'norm' if part.lower().startswith(NORM_NAMES) else part}"
        module = name.rsplit(".", 1)[0] if "." in name else name
        if any(module == e or module.startswith(e + ".") for e in self.embeddings):
            return "embedding"
        parts = name.split(".")
        # Wrappers (`transformer.`, `model.`) hold everything: name by the first level that is not the only one.
        return parts[1] if len(parts) > 2 and self.prefix and self.prefix.startswith(parts[0] + ".") else parts[0]
