"""Built-in recipes. Every model takes raw float32 features ``(N, F)`` (normalisation is inside,
so the exported ONNX model serves raw data) and returns logits (classifiers) or the prediction in
the target's own units (regressor)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .config import ConfigError, TrainerConfig
from .data import Dataset, Split


class Standardize(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mlp(n_in: int, hidden: list[int], n_out: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class TabularNet(nn.Module):
    def __init__(
        self,
        x_mean: np.ndarray,
        x_std: np.ndarray,
        body: nn.Module,
        y_mean: float = 0.0,
        y_std: float = 1.0,
        regression: bool = False,
    ) -> None:
        super().__init__()
        self.norm = Standardize(x_mean, x_std)
        self.body = body
        self.regression = regression
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(self.norm(x))
        if self.regression:
            return out.squeeze(-1) * self.y_std + self.y_mean
        return out


class SmallCNN(nn.Module):
    """conv-relu-conv-relu-pool-MLP on ``(N, C*H*W)`` reshaped to ``(N, C, H, W)``."""

    def __init__(
        self,
        x_mean: float,
        x_std: float,
        shape: list[int],
        channels: list[int],
        hidden: list[int],
        n_out: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.shape = [int(s) for s in shape]
        self.register_buffer("x_mean", torch.tensor(float(x_mean)))
        self.register_buffer("x_std", torch.tensor(float(x_std)))
        convs: list[nn.Module] = []
        c_in = self.shape[0]
        for c in channels:
            convs += [nn.Conv2d(c_in, c, kernel_size=3, padding=1), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*convs)
        h, w = self.shape[1], self.shape[2]
        # A fixed pool (not adaptive) keeps the ONNX graph static in H and W.
        self.pool = nn.MaxPool2d(2) if min(h, w) >= 2 else nn.Identity()
        flat = c_in * ((h // 2) * (w // 2) if min(h, w) >= 2 else h * w)
        self.head = mlp(flat, hidden, n_out, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.x_mean) / self.x_std
        x = x.reshape(-1, *self.shape)
        x = self.pool(self.features(x))
        return self.head(torch.flatten(x, 1))


def image_shape(cfg: TrainerConfig, ds: Dataset) -> list[int]:
    shape = cfg.image_shape or ds.image_shape
    n = ds.x.shape[1]
    if shape is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ConfigError(
                "spec.hyperparameters.image_shape",
                f"cnn-classifier needs image_shape [C, H, W] for {n} features (not a square)",
            )
        shape = [1, side, side]
    if len(shape) == 2:
        shape = [1, *shape]
    if len(shape) != 3 or int(np.prod(shape)) != n:
        raise ConfigError(
            "spec.hyperparameters.image_shape", f"{shape} does not hold {n} features (C*H*W)"
        )
    return shape


def build(cfg: TrainerConfig, ds: Dataset, sp: Split) -> nn.Module:
    recipe = cfg.recipe
    if recipe in ("mlp-classifier", "cnn-classifier") and ds.task != "classification":
        raise ConfigError("spec.model.recipe", f"{recipe} needs a classification label")
    n_feat = sp.x_train.shape[1]
    if recipe == "cnn-classifier":
        return SmallCNN(
            float(sp.x_train.mean()),
            float(sp.x_train.std() or 1.0),
            image_shape(cfg, ds),
            cfg.channels,
            cfg.hidden[:1] if cfg.hidden else [],
            ds.num_classes,
            cfg.dropout,
        )
    mean = sp.x_train.mean(axis=0)
    std = sp.x_train.std(axis=0)
    std = np.where(std < 1e-8, 1.0, std)
    if recipe == "mlp-classifier":
        return TabularNet(mean, std, mlp(n_feat, cfg.hidden, ds.num_classes, cfg.dropout))
    if recipe == "mlp-regressor":
        y = sp.y_train.astype(np.float64)
        return TabularNet(
            mean,
            std,
            mlp(n_feat, cfg.hidden, 1, cfg.dropout),
            float(y.mean()),
            float(y.std() or 1.0),
            regression=True,
        )
    raise ConfigError("spec.model.recipe", f"unknown recipe {recipe!r}")
