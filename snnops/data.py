"""Data sets for the training CLI: scikit-learn's handwritten digits (shipped inside
that package, no download) and CIFAR-10/100 read from a local directory in the
standard python-pickle format.

Every loader returns float32 images ``[N, C, H, W]`` normalized per channel and
int64 labels, split into train and test.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


class DatasetError(ValueError):
    """A data set is missing or malformed; the message says which file and why."""


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str

    @property
    def input_size(self):
        return tuple(self.x_train.shape[1:])


def _normalize(x_train, x_test):
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x_train - mean) / std, (x_test - mean) / std


def digits(size: int = 16, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), resized to
    ``size`` x ``size`` (bilinear) and split with a fixed seed."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover
        raise DatasetError("the digits data set needs scikit-learn (pip install scikit-learn)") from exc
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.from_numpy(d.target.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    x_train, x_test = _normalize(x[train], x[test])
    return Split(x_train, y[train], x_test, y[test], 10, "digits")


def _unpickle(path):
    if not os.path.isfile(path):
        raise DatasetError(f"CIFAR file missing: {path}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as exc:
        raise DatasetError(f"CIFAR file {path} is not a python pickle: {exc}") from exc


def _cifar_arrays(entry, path, label_key):
    try:
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"CIFAR file {path} lacks the b'data' / {label_key!r} entries") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(f"CIFAR file {path}: expected data of shape [N, 3072] and N labels, "
                           f"got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def cifar(root: str, num_classes: int = 10) -> Split:
    """CIFAR-10 (``cifar-10-batches-py``: data_batch_1..5, test_batch) or CIFAR-100
    (``cifar-100-python``: train, test) from ``root`` (the folder itself or its parent)."""
    if num_classes not in (10, 100):
        raise DatasetError(f"CIFAR has 10 or 100 classes, got {num_classes}")
    if not os.path.isdir(root):
        raise DatasetError(f"dataset directory not found: {root}")
    sub = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    if os.path.isdir(os.path.join(root, sub)):
        root = os.path.join(root, sub)
    if num_classes == 10:
        train_files = [os.path.join(root, f"data_batch_{i}") for i in range(1, 6)]
        test_files = [os.path.join(root, "test_batch")]
        key = b"labels"
    else:
        train_files = [os.path.join(root, "train")]
        test_files = [os.path.join(root, "test")]
        key = b"fine_labels"

    def load(files):
        xs, ys = zip(*(_cifar_arrays(_unpickle(p), p, key) for p in files))
        return torch.from_numpy(np.concatenate(xs)).float() / 255.0, torch.from_numpy(np.concatenate(ys))

    x_train, y_train = load(train_files)
    x_test, y_test = load(test_files)
    if int(y_train.max()) >= num_classes or int(y_train.min()) < 0:
        raise DatasetError(f"CIFAR labels in {root} fall outside 0..{num_classes - 1}")
    x_train, x_test = _normalize(x_train, x_test)
    return Split(x_train, y_train, x_test, y_test, num_classes, f"cifar{num_classes}")


def load(name: str, data_dir: str | None = None, **kwargs) -> Split:
    """``digits`` | ``cifar10`` | ``cifar100`` (the latter two need ``data_dir``)."""
    if name == "digits":
        return digits(**kwargs)
    if name in ("cifar10", "cifar100"):
        if data_dir is None:
            raise DatasetError(f"{name} is read from a local directory: pass --data-dir")
        return cifar(data_dir, 10 if name == "cifar10" else 100)
    raise DatasetError(f"unknown dataset {name!r}; expected digits, cifar10 or cifar100")


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, generator=None):
    """Yield ``(x, y)`` mini-batches."""
    n = len(y)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]
