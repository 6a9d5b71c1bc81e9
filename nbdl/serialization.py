"""save/load: a checkpoint is data, never code.

``save`` writes a flat mapping of names to arrays as .npz through a temporary file in
the same directory and an atomic rename, so a crash never leaves half a checkpoint.
Nested dicts (a model's and an optimizer's state in one file) are flattened with
"/" in the keys, and a list of dicts (param_groups) becomes a dict keyed "0", "1", ...; scalars and strings are stored as 0-d arrays. ``load`` reads with
``allow_pickle=False``: object arrays are refused, so loading never runs code.
"""
import os
import tempfile

import numpy as np

_SEP = "/"


def _is_dict_list(v):
    """A list of dicts (an optimizer's param_groups): stored under keys "0", "1", ..."""
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def _flatten(obj, prefix, out):
    if _is_dict_list(obj):
        obj = {str(i): v for i, v in enumerate(obj)}
    if isinstance(obj, dict):
        for k, v in obj.items():
            k = str(k)
            if _SEP in k:
                raise ValueError(f"save: key {k!r} contains {_SEP!r}, which separates nested levels")
            nested = isinstance(v, dict) or _is_dict_list(v)
            _flatten(v, f"{prefix}{k}{_SEP}" if nested else f"{prefix}{k}", out)
        if not obj:
            out[prefix + "__empty__"] = np.zeros(0)
        return
    if hasattr(obj, "numpy") and callable(obj.numpy):
        obj = obj.numpy()
    arr = np.asarray(obj)
    if arr.dtype == object:
        raise TypeError(f"save: {prefix!r} holds {type(obj).__name__}, which is not plain data "
                        f"(arrays, numbers, strings, nested dicts only)")
    out[prefix] = arr


def save(obj, path):
    """Write ``obj`` (a dict of arrays/Tensors/numbers/strings, possibly nested) to ``path`` (.npz)."""
    if not isinstance(obj, dict):
        raise TypeError(f"save: expected a dict (e.g. a state_dict), got {type(obj).__name__}")
    flat = {}
    _flatten(obj, "", flat)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **flat)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)   # mkstemp makes files owner-only; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _unflatten(flat):
    root = {}
    for key, value in flat.items():
        parts = key.split(_SEP)
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if parts[-1] == "__empty__":
            continue
        node[parts[-1]] = value
    return root


def load(path):
    """Read a file written by :func:`save`; returns nested dicts of numpy arrays.

    0-d arrays come back as 0-d arrays (use ``.item()`` for a Python scalar).
    Raises ValueError for a file that is not an nbdl/npz checkpoint.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated zip, not a zip, object arrays
        raise ValueError(f"load: {path!r} is not a readable .npz checkpoint ({e})") from None
    return _unflatten(flat)
