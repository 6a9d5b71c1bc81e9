"""Datasets for the command line: bundled MNIST digits and the CPython help texts.

Both ship with the installation, so nothing is downloaded at run time:
- ``mnist5k``: 5,000 MNIST digits (500 per class) bundled as ``nbdl/data/mnist5k.npz``
  (attribution and license in ``nbdl/data/README.md``), split 4,000/1,000 with a fixed,
  stratified split (400/100 images per class) that never depends on ``--seed``.
- ``pydoc_data.topics``: the interactive help texts of every CPython, about 465,000
  characters of English technical prose; the last 10% is held out for validation.
"""

import gzip
import importlib.resources
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Digits",
    "Text",
    "load_digits",
    "load_text",
    "shift_images",
    "unigram_bits_per_char",
    "gzip_bits_per_char",
]

#: seed of the fixed train/test split (the split is part of the dataset, not of a run)
SPLIT_SEED = 20240501
TRAIN_PER_CLASS = 400


@dataclass
class Digits:
    """MNIST digits as float32 NCHW images in [0, 1] plus int64 labels.

    x_train: (4000, 1, 28, 28), y_train: (4000,), x_test: (1000, 1, 28, 28), y_test: (1000,).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _read_mnist5k():
    """Raw (images uint8 (5000, 28, 28), labels uint8 (5000,)) from the package data."""
    resource = importlib.resources.files("nbdl").joinpath("data", "mnist5k.npz")
    with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        return npz["images"], npz["labels"]


def stratified_split(labels, train_per_class, seed=SPLIT_SEED):
    """Indices (train, test): `train_per_class` random images of each class go to train.

    Both index arrays are sorted, so the split does not depend on the file order
    beyond the images it picks.
    """
    rng = np.random.default_rng(seed)
    train = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        train.append(rng.permutation(members)[:train_per_class])
    train = np.sort(np.concatenate(train))
    test = np.setdiff1d(np.arange(len(labels)), train)
    return train, test


def load_digits():
    """The fixed 4,000/1,000 stratified split of the bundled 5,000 MNIST digits."""
    images, labels = _read_mnist5k()
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    y = labels.astype(np.int64)
    train, test = stratified_split(y, TRAIN_PER_CLASS)
    return Digits(x[train], y[train], x[test], y[test])


def shift_images(x, max_shift, rng):
    """Translate each image by a random (dy, dx) in [-max_shift, max_shift]^2, zero fill.

    x: (N, C, H, W) -> new (N, C, H, W) array. A cheap augmentation that LeNet-5 on a few
    thousand digits profits from (about +1% test accuracy): pad once, then take one
    H x W window per image from the sliding-window view (no copy until the final gather).
    """
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    s = max_shift
    padded = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))
    dy = rng.integers(0, 2 * s + 1, n)
    dx = rng.integers(0, 2 * s + 1, n)
    # windows: (N, C, 2s+1, 2s+1, H, W) -> pick (dy[i], dx[i]) for every image i
    return np.ascontiguousarray(windows[np.arange(n), :, dy, dx])


@dataclass
class Text:
    """A character-level corpus: the vocabulary and int64 codes of both splits."""

    vocab: str  # the sorted distinct characters; code i is vocab[i]
    train: np.ndarray  # (n_train,) int64
    val: np.ndarray  # (n_val,) int64

    def encode(self, s):
        """Codes of the characters of `s`; a ValueError names the first unknown one."""
        index = {c: i for i, c in enumerate(self.vocab)}
        return encode(s, index)

    def decode(self, codes):
        return "".join(self.vocab[int(i)] for i in codes)


def encode(s, index):
    try:
        return np.array([index[c] for c in s], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the model's vocabulary") from None


def corpus_text():
    """The concatenated CPython help texts (``pydoc_data.topics``), topics in sorted order."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def load_text(val_fraction=0.1, vocab=None):
    """The help texts split into the first 90% (train) and the last 10% (validation).

    `vocab`: the vocabulary of a saved model; by default the sorted distinct characters
    of the whole text (103 on current CPythons). Characters outside a given vocabulary
    (another Python version's help texts) are dropped so a saved model still evaluates.
    """
    text = corpus_text()
    if vocab is None:
        vocab = "".join(sorted(set(text)))
    else:
        known = set(vocab)
        text = "".join(c for c in text if c in known)
    index = {c: i for i, c in enumerate(vocab)}
    codes = encode(text, index)
    n_train = int(len(codes) * (1.0 - val_fraction))
    return Text(vocab, codes[:n_train], codes[n_train:])


def unigram_bits_per_char(train, val, vocab_size):
    """Bits/char of the best context-free model: add-one character frequencies of `train`.

    The baseline any language model must beat: -mean(log2 p(c)) over the validation text.
    """
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    p = counts / counts.sum()
    return float(-np.log2(p[val]).mean())


def gzip_bits_per_char(text):
    """Size of ``gzip -9`` output of `text` in bits per character: a classic compressor baseline."""
    data = text.encode("utf-8")
    return len(gzip.compress(data, compresslevel=9)) * 8 / max(1, len(text))


def bits(nats):
    """Convert a loss in nats (natural log) to bits."""
    return nats / math.log(2.0)
