"""Train the demo zoo's small models on scikit-learn's bundled digits data and write them as safetensors.

Run from the repository root:  python -m deploy.zoos.make_demo   (about a minute on 2 cores)

Why committed files and this script: the demo audit must work offline and quickly, with real trained
weights (not just random ones), and anyone must be able to reproduce them. Seeds are fixed; results
are deterministic on one machine/torch version (BLAS may differ in the last bits elsewhere).

Outputs under deploy/zoos/demo/digits/:
* ``mlp_<act>.safetensors``: plain MLP state dicts (nn.Sequential keys 0.weight, 0.bias, 2.weight, ...)
  with the ``activation`` metadata key lipcore's loaders read. Inputs are the 64 pixels scaled to [0, 1].
* ``cnn_*.safetensors``: small CNNs whose layer list is stored under ``lipzoo.arch`` (see
  flows/hubs/archs.py) with ``lipzoo.input_shape`` = [1, 8, 8].
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flows.hubs import archs

OUT = Path(__file__).resolve().parent / "demo" / "digits"

MLPS = {  # name -> (activation spec for lipcore, torch module factory, hidden widths)
    "mlp_relu": ("relu", nn.ReLU, [64, 64]),
    "mlp_tanh": ("tanh", nn.Tanh, [64, 64]),
    "mlp_leaky": ("leaky_relu:0.1", lambda: nn.LeakyReLU(0.1), [64, 64]),
    "mlp_gelu": ("gelu", nn.GELU, [64, 64]),
    "mlp_relu_wide": ("relu", nn.ReLU, [128, 128, 128]),
}

CNNS = {
    "cnn_small": [
        ("conv2d", {"in_channels": 1, "out_channels": 8, "kernel_size": 3, "padding": 1}), ("relu", {}),
        ("conv2d", {"in_channels": 8, "out_channels": 16, "kernel_size": 3, "stride": 2, "padding": 1}), ("relu", {}),
        ("flatten", {}), ("linear", {"in_features": 16 * 4 * 4, "out_features": 10}),
    ],
    "cnn_pool": [
        ("conv2d", {"in_channels": 1, "out_channels": 12, "kernel_size": 3, "padding": 1}), ("relu", {}),
        ("avgpool2d", {"kernel_size": 2}),
        ("conv2d", {"in_channels": 12, "out_channels": 16, "kernel_size": 3, "padding": 1}), ("relu", {}),
        ("flatten", {}), ("linear", {"in_features": 16 * 4 * 4, "out_features": 10}),
    ],
}


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    x, y = x[idx] / 16.0, y[idx]
    n = int(0.8 * len(x))
    t = lambda a, d: torch.as_tensor(a, dtype=d)  # noqa: E731
    return t(x[:n], torch.float32), t(y[:n], torch.long), t(x[n:], torch.float32), t(y[n:], torch.long)


def train(model: nn.Module, xtr: torch.Tensor, ytr: torch.Tensor, epochs: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            loss_fn(model(xtr[b]), ytr[b]).backward()
            opt.step()
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def save(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = digits()
    common = {"lipzoo.dataset": "sklearn.datasets.load_digits (pixels / 16, 80/20 split, seed 0)",
              "lipzoo.made_by": "deploy/zoos/make_demo.py"}
    for i, (name, (act, factory, hidden)) in enumerate(MLPS.items()):
        t0 = time.perf_counter()
        torch.manual_seed(100 + i)
        dims = [64, *hidden, 10]
        layers: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if k < len(dims) - 2:
                layers.append(factory())
        model = nn.Sequential(*layers)
        train(model, xtr, ytr, epochs=30, seed=i)
        acc = accuracy(model, xte, yte)
        save(model, OUT / f"{name}.safetensors", {**common, "activation": act, "lipzoo.input_shape": "[64]",
                                                  "lipzoo.test_accuracy": f"{acc:.4f}"})
        print(f"{name}: test accuracy {acc:.3f} ({time.perf_counter() - t0:.1f} s)")
    for i, (name, layers_spec) in enumerate(CNNS.items()):
        t0 = time.perf_counter()
        torch.manual_seed(200 + i)
        spec = archs.spec_json(layers_spec)
        model = archs.build(spec)
        train(model, xtr.view(-1, 1, 8, 8), ytr, epochs=15, seed=10 + i)
        acc = accuracy(model, xte.view(-1, 1, 8, 8), yte)
        save(model, OUT / f"{name}.safetensors", {**common, archs.ARCH_KEY: spec,
                                                  archs.INPUT_SHAPE_KEY: json.dumps([1, 8, 8]),
                                                  "lipzoo.test_accuracy": f"{acc:.4f}"})
        print(f"{name}: test accuracy {acc:.3f} ({time.perf_counter() - t0:.1f} s)")
    total = sum(p.stat().st_size for p in OUT.glob("*.safetensors"))
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
