"""Datasets: ``builtin://NAME`` (shipped inside scikit-learn), CSV/Parquet from any fsspec URI."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import storage
from .config import ConfigError

# Only sets scikit-learn ships inside its wheel: nothing is downloaded.
BUILTIN = {
    "digits": ("load_digits", "classification", [1, 8, 8]),
    "iris": ("load_iris", "classification", None),
    "wine": ("load_wine", "classification", None),
    "breast_cancer": ("load_breast_cancer", "classification", None),
    "diabetes": ("load_diabetes", "regression", None),
}


@dataclass
class Dataset:
    x: np.ndarray  # float32 (N, F)
    y: np.ndarray  # int64 (classification) or float32 (regression)
    task: str  # classification | regression
    num_classes: int
    feature_names: list[str]
    image_shape: list[int] | None = None
    classes: list[Any] | None = None


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load(uri: str, *, target: str | None = None, task: str | None = None) -> Dataset:
    """Load a dataset; ``task`` (classification|regression) overrides the guess for files."""
    if uri.startswith("builtin://"):
        return load_builtin(uri[len("builtin://") :].strip("/").split("?")[0], task)
    return load_table(uri, target=target, task=task)


def load_builtin(name: str, task: str | None = None) -> Dataset:
    if name not in BUILTIN:
        raise ConfigError(
            "spec.dataset.uri",
            f"unknown builtin dataset {name!r}; available: {', '.join(sorted(BUILTIN))} "
            "(only sets shipped inside scikit-learn; nothing is downloaded)",
        )
    import sklearn.datasets

    loader, kind, shape = BUILTIN[name]
    bunch = getattr(sklearn.datasets, loader)()
    x = np.asarray(bunch.data, dtype=np.float32)
    kind = task or kind
    if kind == "classification":
        y = np.asarray(bunch.target, dtype=np.int64)
        classes = [str(c) for c in getattr(bunch, "target_names", np.unique(y))]
        n = int(y.max()) + 1
    else:
        y = np.asarray(bunch.target, dtype=np.float32)
        classes, n = None, 0
    names = [str(f) for f in getattr(bunch, "feature_names", [f"x{i}" for i in range(x.shape[1])])]
    return Dataset(x, y, kind, n, names, shape, classes)


def load_table(uri: str, *, target: str | None, task: str | None) -> Dataset:
    import pandas as pd

    data = _read_uri(uri)
    lower = uri.lower().split("?")[0]
    try:
        if lower.endswith((".parquet", ".pq")) or data[:4] == b"PAR1":
            frame = pd.read_parquet(io.BytesIO(data))
        else:
            frame = pd.read_csv(io.BytesIO(data))
    except Exception as exc:
        raise ConfigError(
            "spec.dataset.uri", f"cannot read {uri} as CSV or Parquet: {exc}"
        ) from exc
    if frame.shape[1] < 2:
        raise ConfigError(
            "spec.dataset.uri", f"{uri} needs at least one feature and a label column"
        )
    label = target if target is not None else str(frame.columns[-1])
    if label not in frame.columns:
        raise ConfigError(
            "spec.hyperparameters.target",
            f"column {label!r} is not in {uri} (columns: {list(frame.columns)[:20]})",
        )
    frame = frame.dropna(subset=[label])
    yser = frame[label]
    feats = frame.drop(columns=[label])
    feats = pd.get_dummies(feats, dummy_na=False).astype("float32")
    feats = feats.fillna(feats.mean()).fillna(0.0)
    if task is None:
        numeric = pd.api.types.is_numeric_dtype(yser)
        integral = numeric and np.all(np.mod(yser.to_numpy(dtype=float), 1) == 0)
        task = (
            "classification"
            if (not numeric or (integral and yser.nunique() <= 50))
            else "regression"
        )
    if task == "classification":
        codes, uniques = pd.factorize(yser, sort=True)
        y = codes.astype(np.int64)
        classes = [u.item() if hasattr(u, "item") else u for u in uniques]
        n = len(uniques)
    else:
        y = yser.to_numpy(dtype=np.float32)
        classes, n = None, 0
    return Dataset(
        feats.to_numpy(dtype=np.float32), y, task, n, [str(c) for c in feats.columns], None, classes
    )


def _read_uri(uri: str) -> bytes:
    try:
        data = storage.read_bytes(uri)
    except ImportError as exc:  # e.g. s3fs missing in this image
        raise ConfigError("spec.dataset.uri", f"no filesystem for {uri}: {exc}") from exc
    except Exception as exc:
        raise RuntimeError(f"cannot read dataset {uri}: {exc}") from exc
    if data is None:
        raise ConfigError("spec.dataset.uri", f"{uri} does not exist")
    return data


def split(ds: Dataset, val_fraction: float, seed: int) -> Split:
    """A seeded shuffle, then the last ``val_fraction`` is validation."""
    n = len(ds.y)
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise ConfigError(
            "spec.hyperparameters.val_fraction", f"leaves no training rows ({n} rows)"
        )
    tr, va = order[: n - n_val], order[n - n_val :]
    return Split(ds.x[tr], ds.y[tr], ds.x[va], ds.y[va])
