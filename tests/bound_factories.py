"""Factories for `lipzoo bound package.module:function` tests (tests/ is on sys.path under pytest)."""

from __future__ import annotations

from torch import nn


class Block(nn.Module):
    """x + bn(conv(relu(conv(x)))): a residual block whose last BatchNorm gamma is zero-initialised, as timm's
    ResNets are (zero_init_last): at init the branch is exactly zero and the block is the identity."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x):  # noqa: ANN001, ANN201
        return x + self.bn(self.conv2(self.act(self.conv1(x))))


def zero_gamma_resnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), Block(4), Block(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 2))


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def not_a_module() -> int:
    return 3
