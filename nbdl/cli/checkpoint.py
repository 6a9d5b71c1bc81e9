"""Checkpoints of the command line: one ``.npz`` with model, optimizer and schedule state.

A checkpoint is data, never code: every array is stored as its own npz entry and
everything else (the model kind and config, the training config, the epoch, the metric
history, the scalar parts of the optimizer and scheduler state) as one JSON string in
the entry ``meta``. It is written with `nbdl.save` (temporary file + rename, so a crash
never leaves half a checkpoint) and read with `nbdl.load` (``allow_pickle=False``).

File layout (entry names as `nbdl.save` flattens them):
- ``meta``: the JSON string;
- ``model/<name>``: the model's state_dict, one entry per parameter or buffer;
- ``arrays/<n>``: the arrays of the optimizer and scheduler state. Nested state (an
  optimizer's ``{"state": {0: {"exp_avg": array, "step": 3}}, ...}``) is flattened by
  `pack`: each array becomes ``arrays/<n>`` and its place in the JSON tree holds
  ``{"__array__": "<n>"}``; dicts with non-string keys are kept as ``__items__`` pairs,
  so `unpack(pack(x)) == x` for the types state dicts use.
"""

import json
import os
from dataclasses import dataclass, field

import numpy as np

import nbdl

from .errors import CLIError
from .runs import new_file_mode

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "pack", "unpack", "resolve_checkpoint_path"]

CHECKPOINT_NAME = "checkpoint.npz"  # file name inside a run directory
FORMAT = "nbdl-cli-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """Everything needed to evaluate, sample from, or resume a training run."""

    kind: str  # "lenet" | "charlm": a key of nbdl.cli.models.MODEL_KINDS
    model_config: dict  # keyword arguments of the model class
    model_state: dict  # Module.state_dict(): name -> array
    train_config: dict = field(default_factory=dict)  # optimizer, lr, batch size, epochs, seed, ...
    optimizer_state: dict | None = None  # Optimizer.state_dict()
    scheduler_state: dict | None = None  # LRScheduler.state_dict()
    epoch: int = 0  # completed epochs
    metrics: list = field(default_factory=list)  # one dict per completed epoch
    extra: dict = field(default_factory=dict)  # baselines etc. (JSON-able)


def _to_array(x):
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "numpy"):  # a Tensor that slipped into a state dict
        return np.asarray(x.numpy())
    return None


def pack(tree, arrays):
    """JSON-able copy of `tree` with every array moved into `arrays` under the key "<n>"."""
    arr = _to_array(tree)
    if arr is not None:
        key = str(len(arrays))  # unique across all packed trees
        arrays[key] = arr
        return {"__array__": key}
    if isinstance(tree, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in tree):
            return {k: pack(v, arrays) for k, v in tree.items()}
        return {"__items__": [[k, pack(v, arrays)] for k, v in tree.items()]}
    if isinstance(tree, tuple):
        return {"__tuple__": [pack(v, arrays) for v in tree]}
    if isinstance(tree, list):
        return [pack(v, arrays) for v in tree]
    if isinstance(tree, np.generic):
        return tree.item()
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store a {type(tree).__name__} in a checkpoint")


def unpack(tree, arrays):
    """Inverse of `pack`: rebuild dicts, tuples and arrays from the JSON tree."""
    if isinstance(tree, dict):
        if "__array__" in tree:
            return np.asarray(arrays[tree["__array__"]])
        if "__items__" in tree:
            return {_key(k): unpack(v, arrays) for k, v in tree["__items__"]}
        if "__tuple__" in tree:
            return tuple(unpack(v, arrays) for v in tree["__tuple__"])
        return {k: unpack(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unpack(v, arrays) for v in tree]
    return tree


def _key(k):
    return tuple(k) if isinstance(k, list) else k


def save_checkpoint(path, ckpt):
    """Write `ckpt` to `path` atomically (via `nbdl.save`)."""
    arrays = {}
    model = {k: _to_array(v) for k, v in ckpt.model_state.items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "nbdl_version": getattr(nbdl, "__version__", "unknown"),
        "kind": ckpt.kind,
        "model_config": ckpt.model_config,
        "model_keys": list(model),
        "train_config": ckpt.train_config,
        "optimizer_state": pack(ckpt.optimizer_state, arrays),
        "scheduler_state": pack(ckpt.scheduler_state, arrays),
        "epoch": ckpt.epoch,
        "metrics": ckpt.metrics,
        "extra": ckpt.extra,
    }
    nbdl.save({"meta": np.array(json.dumps(meta)), "model": model, "arrays": arrays}, path)
    os.chmod(path, new_file_mode())  # an ordinary file, not the owner-only 0600 of a temporary file


def load_checkpoint(path, expect_kind=None, command="this command"):
    """Read a checkpoint written by `save_checkpoint`; CLIError on any problem.

    `expect_kind`: a model kind or a tuple of kinds; a checkpoint of another model is
    refused with a message naming both.
    """
    path = resolve_checkpoint_path(path)
    entries = _read_entries(path)
    meta = _read_meta(path, entries)
    kind = meta.get("kind")
    if expect_kind is not None:
        kinds = (expect_kind,) if isinstance(expect_kind, str) else tuple(expect_kind)
        if kind not in kinds:
            raise CLIError(
                f"{path} holds a {kind!r} model, but {command} needs a {' or '.join(map(repr, kinds))} checkpoint"
            )
    try:
        model_state = {k: np.asarray(entries["model"][k]) for k in meta["model_keys"]}
        arrays = entries.get("arrays", {})
        return Checkpoint(
            kind=kind,
            model_config=meta["model_config"],
            model_state=model_state,
            train_config=meta.get("train_config", {}),
            optimizer_state=unpack(meta.get("optimizer_state"), arrays),
            scheduler_state=unpack(meta.get("scheduler_state"), arrays),
            epoch=int(meta.get("epoch", 0)),
            metrics=meta.get("metrics", []),
            extra=meta.get("extra", {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CLIError(f"{path} is a damaged nbdl checkpoint (missing or bad entry: {e})") from None


def resolve_checkpoint_path(path):
    """`path` itself, or `path`/checkpoint.npz when a run directory is given."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CLIError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        candidate = os.path.join(path, CHECKPOINT_NAME)
        if not os.path.isfile(candidate):
            raise CLIError(f"{path} is a directory without a {CHECKPOINT_NAME}")
        return candidate
    return path


def _read_entries(path):
    try:
        return nbdl.load(path)
    except OSError as e:  # permission denied, I/O error
        raise CLIError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception:  # truncated or foreign file: nbdl.load refuses it (never unpickles)
        raise CLIError(
            f"cannot read checkpoint {path}: not an .npz file (corrupt, truncated, or another format)"
        ) from None


def _read_meta(path, entries):
    try:
        meta = json.loads(str(np.asarray(entries["meta"])[()]))
        if not isinstance(meta, dict):
            raise ValueError("meta is not a JSON object")
    except (KeyError, ValueError, TypeError, IndexError):
        raise CLIError(f"{path} is an .npz file but not an nbdl checkpoint (no valid 'meta' entry)") from None
    if meta.get("format") != FORMAT:
        raise CLIError(f"{path} is not an nbdl checkpoint (format {meta.get('format')!r})")
    if int(meta.get("version", 0)) > VERSION:
        raise CLIError(
            f"{path} was written by a newer nbdl (checkpoint version {meta.get('version')}, "
            f"this nbdl reads up to {VERSION}): upgrade nbdl"
        )
    return meta
