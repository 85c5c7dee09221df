"""Probes: how linearly (or non-linearly) decodable a binary concept is from representations.

A probe is fitted on a training split and scored by held-out accuracy (chance = the majority
rate, 0.5 on balanced data). The linear probe is ``StandardScaler → LogisticRegression`` with
balanced class weights, so an imbalanced split cannot score by predicting the majority class;
the MLP probe is ``StandardScaler → MLPClassifier``. Everything is seeded.

Inputs are ``X [N, D]`` (numpy or torch, any float dtype) and ``y [N]`` (binary labels).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

ArrayLike = NDArray[np.generic] | torch.Tensor
ProbeKind = Literal["linear", "mlp"]

__all__ = [
    "ArrayLike",
    "ProbeKind",
    "linear_probe",
    "linear_probe_accuracy",
    "mlp_probe_accuracy",
    "probe_accuracy",
    "stratified_split",
    "to_numpy",
]


def to_numpy(x: ArrayLike) -> NDArray[np.generic]:
    """A detached CPU numpy view/copy of ``x`` (bf16/fp16 tensors are widened to float32)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def _features(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = to_numpy(x).astype(np.float64, copy=False)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D], got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _labels(y: ArrayLike, n: int, name: str) -> NDArray[np.int64]:
    arr = to_numpy(y).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} labels for {n} rows")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be binary (0/1 or bool)")
    return arr.astype(np.int64)


def _train_test(
    x_train: ArrayLike, y_train: ArrayLike, x_test: ArrayLike, y_test: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]]:
    xtr, xte = _features(x_train, "X_train"), _features(x_test, "X_test")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"X_train has {xtr.shape[1]} features but X_test has {xte.shape[1]}")
    ytr, yte = _labels(y_train, xtr.shape[0], "y_train"), _labels(y_test, xte.shape[0], "y_test")
    if len(np.unique(ytr)) < 2:
        raise ValueError("y_train holds a single class; a probe needs both classes to train")
    return xtr, ytr, xte, yte


def linear_probe(x_train: ArrayLike, y_train: ArrayLike, *, seed: int, max_iter: int = 2000) -> Pipeline:
    """Fit ``StandardScaler → LogisticRegression(class_weight="balanced")``; returns the pipeline."""
    xtr = _features(x_train, "X_train")
    ytr = _labels(y_train, xtr.shape[0], "y_train")
    if len(np.unique(ytr)) < 2:
        raise ValueError("y_train holds a single class; a probe needs both classes to train")
    model = make_pipeline(
        StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=max_iter, random_state=seed)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(xtr, ytr)
    return model


def linear_probe_accuracy(
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    y_test: ArrayLike,
    *,
    seed: int,
    max_iter: int = 2000,
) -> float:
    """Held-out accuracy of the balanced, standardised logistic-regression probe."""
    xtr, ytr, xte, yte = _train_test(x_train, y_train, x_test, y_test)
    model = linear_probe(xtr, ytr, seed=seed, max_iter=max_iter)
    return float(model.score(xte, yte))


def mlp_probe_accuracy(
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    y_test: ArrayLike,
    *,
    seed: int,
    hidden_sizes: tuple[int, ...] = (100,),
    max_iter: int = 500,
) -> float:
    """Held-out accuracy of ``StandardScaler → MLPClassifier(hidden_sizes)`` (ReLU, Adam, seeded)."""
    xtr, ytr, xte, yte = _train_test(x_train, y_train, x_test, y_test)
    model = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=hidden_sizes, max_iter=max_iter, random_state=seed)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(xtr, ytr)
    return float(model.score(xte, yte))


def stratified_split(
    x: ArrayLike, y: ArrayLike, *, test_fraction: float, seed: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Stratified ``(X_train, X_test, y_train, y_test)``; the test split keeps the class ratio."""
    arr = _features(x, "X")
    labels = _labels(y, arr.shape[0], "y")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    counts = np.bincount(labels, minlength=2)
    if counts.min() < 2:
        raise ValueError(f"a stratified split needs >= 2 samples of each class, got counts {counts.tolist()}")
    x_tr, x_te, y_tr, y_te = train_test_split(
        arr, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return x_tr, x_te, y_tr, y_te


def probe_accuracy(x: ArrayLike, y: ArrayLike, kind: ProbeKind, *, test_fraction: float, seed: int) -> float:
    """Stratified split of one array, then the ``kind`` probe's held-out accuracy."""
    x_tr, x_te, y_tr, y_te = stratified_split(x, y, test_fraction=test_fraction, seed=seed)
    if kind == "linear":
        return linear_probe_accuracy(x_tr, y_tr, x_te, y_te, seed=seed)
    if kind == "mlp":
        return mlp_probe_accuracy(x_tr, y_tr, x_te, y_te, seed=seed)
    raise ValueError(f"probe kind must be 'linear' or 'mlp', got {kind!r}")
