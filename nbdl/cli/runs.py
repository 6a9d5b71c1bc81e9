"""The output directory of a training run: creation, write checks, metrics.csv.

A run writes ``checkpoint.npz``, ``metrics.csv`` and ``curves.png`` into one directory
(default ``runs/<model>-<YYYYmmdd-HHMMSS>/``). Every file is written to a temporary
name and renamed, so an interrupted run leaves complete files or none.
"""

import csv
import io
import os
import tempfile
import time

from .errors import CLIError

__all__ = ["RunDir", "default_run_dir", "atomic_write_text", "publish", "new_file_mode"]


def default_run_dir(kind, root="runs"):
    """``runs/<kind>-<timestamp>``; a numeric suffix when two runs start in the same second."""
    base = os.path.join(root, f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, n = base, 1
    while os.path.exists(path):
        path, n = f"{base}-{n}", n + 1
    return path


class RunDir:
    """An output directory that is created lazily and removed again if nothing landed in it.

    `check()` runs before training: it fails early (CLIError) when the directory cannot be
    created or written, so a long run never dies at its first checkpoint.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._created = []  # directories this run created (innermost last)

    def file(self, name):
        return os.path.join(self.path, name)

    def check(self):
        """Create the directory (and parents) and prove it is writable, or raise CLIError."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise CLIError(f"output path {self.path} exists and is not a directory")
        try:
            self._makedirs(self.path)
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=self.path)
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            self.cleanup()
            reason = e.strerror or str(e)
            raise CLIError(f"cannot write to output directory {self.path}: {reason}") from None

    def _makedirs(self, path):
        missing = []
        p = os.path.abspath(path)
        while not os.path.exists(p):
            missing.append(p)
            p = os.path.dirname(p)
        for d in reversed(missing):
            os.mkdir(d)
            self._created.append(d)

    def cleanup(self):
        """Remove the directories this run created if they are still empty."""
        for d in reversed(self._created):
            try:
                os.rmdir(d)
            except OSError:
                break  # not empty: something worth keeping is inside
        self._created = []

    def write_metrics(self, rows, name="metrics.csv"):
        """Rewrite metrics.csv with one row per epoch (columns: the keys of the rows)."""
        if not rows:
            return
        columns = list(rows[0])
        for row in rows[1:]:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        atomic_write_text(self.file(name), buf.getvalue())


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def atomic_write_text(path, text):
    """Write `text` to `path` through a temporary file in the same directory + rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def publish(tmp, path):
    """Give the finished temporary file `tmp` ordinary permissions and rename it to `path`.

    mkstemp creates files readable by their owner only (0600); results of a run should
    get the permissions any new file gets (0666 minus the umask).
    """
    os.chmod(tmp, new_file_mode())
    os.replace(tmp, path)


def new_file_mode():
    """The permissions open() would give a new file: 0666 minus the umask."""
    mask = os.umask(0)  # the only portable way to read the umask is to set it
    os.umask(mask)
    return 0o666 & ~mask
