"""curves.png: loss and accuracy per epoch (matplotlib, an optional dependency)."""

import os
import tempfile

from .runs import publish

__all__ = ["plot_curves", "matplotlib_missing_message"]

matplotlib_missing_message = "curves.png skipped: matplotlib is not installed (pip install 'nbdl[plot]')"


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or None when not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)  # files only: never open a window or need a display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path, rows, panels, title, hlines=None):
    """Draw one panel per entry of `panels` and save the figure to `path` atomically.

    rows: the metrics, one dict per epoch with an "epoch" key.
    panels: [(y label, [(column, legend label), ...]), ...]; a y label containing "accuracy"
    is drawn in percent. The legend shows each series' last value.
    hlines: {panel index: [(y, label), ...]} reference lines (baselines).
    Returns False (and writes nothing) when matplotlib is missing.
    """
    plt = _pyplot()
    if plt is None:
        return False
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for i, (ax, (ylabel, series)) in enumerate(zip(axes[0], panels)):
        percent = "accuracy" in ylabel
        for column, label in series:
            values = [float(r[column]) * (100 if percent else 1) for r in rows]
            last = f"{values[-1]:.2f}%" if percent else f"{values[-1]:.3f}"
            ax.plot(epochs, values, marker="o", markersize=3, label=f"{label} ({last})")
        for (y, label), style in zip((hlines or {}).get(i, []), ("--", ":", "-.")):
            ax.axhline(y, linestyle=style, linewidth=1, color="gray", label=f"{label} ({y:.3f})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel + (" (%)" if percent else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save_atomic(fig, path)
    plt.close(fig)
    return True


def _save_atomic(fig, path):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
