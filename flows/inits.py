"""Degenerate initialisations: weight tensors that are identically zero, found from the weights themselves.

Why: timm (and others) zero-initialise some scales so that training starts from an identity-like network: the
last BatchNorm gamma of every ResNet block (`zero_init_last`), Mixer/ResMLP classifier heads. Bounded as it is,
such a random init is not the architecture: a residual branch ending in a zero gamma is exactly zero, so the net
is its shortcut path (timm's resnet18 offline: naive = best = 5.44). The check is by weights, never by model
name: any weight / affine scale (`weight`, `gamma`, `scale`) whose every entry is 0 makes every path through
its layer constant. The audit and `lipzoo bound` report it as a note; `reinit_zero` re-draws those tensors for
benchmarking (the same draw `benchmarks/bench_arch.py` uses).
"""

from __future__ import annotations

from typing import Any

SCALE_NAMES = ("weight", "gamma", "scale")
SHOWN = 3  # tensor names listed in the one-line note


def _is_scale(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in SCALE_NAMES


def zero_weights(module: Any) -> list[str]:
    """Names of the module's weight / scale parameters whose every entry is exactly zero (biases excluded:
    a zero bias is the ordinary init). Empty for anything that is not a torch module."""
    from torch import nn

    if not isinstance(module, nn.Module):
        return []
    out = []
    for name, p in module.named_parameters():
        if _is_scale(name) and p.numel() > 0 and not bool(p.detach().ne(0).any()):
            out.append(name)
    return out


def degenerate_note(names: list[str]) -> str | None:
    """The one-line, user-visible note for zero weight tensors (None when there are none)."""
    if not names:
        return None
    shown = ", ".join(names[:SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > SHOWN else "")
    return (f"degenerate weights: {len(names)} weight tensor(s) identically zero ({shown}); every path through "
            "them is constant (a residual branch ending in a zero BatchNorm gamma is exactly zero, leaving the "
            "shortcut), so the bound is of that degenerate network, not of the trained architecture; "
            "--reinit-zero (manifest: reinit_zero = true) re-draws them for benchmarking")


def reinit_zero(module: Any) -> list[str]:
    """Re-draw the identically-zero weight tensors in place from torch's global RNG (seed it first for a
    reproducible model): 2-D+ weights ~ N(0, 0.02), scales = 1. Returns the names re-drawn."""
    import torch

    names = set(zero_weights(module))
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name not in names:
                continue
            if p.dim() >= 2:
                p.normal_(0, 0.02)
            else:
                p.fill_(1.0)
    return [n for n, _ in module.named_parameters() if n in names]
