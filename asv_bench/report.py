"""Ratio report of the latest asv results: nbdl vs PyTorch, per op and shape.

    python asv_bench/report.py                   # table on stdout + asv_bench/.asv/report.png
    python asv_bench/report.py --markdown --no-png
    python asv_bench/report.py --machine NAME --commit SHA --png out.png

For every benchmark ``<module>.<Op>.<method>`` and its PyTorch twin
``<module>.Torch<Op>.<method>`` (joined on the parameters they share) it prints
the nbdl value, the PyTorch value, their ratio (nbdl / PyTorch: below 1 means
nbdl is faster or smaller), the GFLOP/s of both where the benchmark declares a
FLOP count (``_common.flops``), and nbdl's GFLOP/s as a fraction of the machine's
sgemm rate (the benchmark marked with ``_common.sgemm_reference``).

The results are asv's own files (``<results_dir>/<machine>/<commit>-<env>.json``
and ``<results_dir>/benchmarks.json``); FLOP counts come from importing the
benchmark modules, so they need the benchmarked package importable (without it
the table simply has no GFLOP/s columns).
"""
import argparse
import ast
import importlib
import itertools
import json
import math
import os
import re
import socket
import sys
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
TWIN_PREFIX = "Torch"


# --- reading asv's files ------------------------------------------------------------------

def load_asv_json(path):
    """json.load that accepts the // comment lines asv allows in asv.conf.json."""
    with open(path) as f:
        text = f.read()
    return json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.MULTILINE))


def asv_dirs(config_path):
    """(results_dir, benchmark_dir) named by asv.conf.json, relative to its folder."""
    conf = load_asv_json(config_path)
    root = os.path.dirname(os.path.abspath(config_path))
    return (os.path.join(root, conf.get("results_dir", "results")),
            os.path.join(root, conf.get("benchmark_dir", "benchmarks")))


def pick_machine(results_dir, machine=None):
    """The machine folder: the one asked for, this host's, or the only one there is."""
    names = sorted(d for d in os.listdir(results_dir)
                   if os.path.isfile(os.path.join(results_dir, d, "machine.json")))
    if machine is not None:
        if machine not in names:
            raise SystemExit(f"report: no results for machine {machine!r} (have: {names})")
        return machine
    if not names:
        raise SystemExit(f"report: no machine results under {results_dir}: run `asv run` first")
    host = socket.gethostname()
    if host in names:
        return host
    if len(names) == 1:
        return names[0]
    raise SystemExit(f"report: several machines {names}: choose one with --machine")


def newest_run(data):
    """Latest benchmark start time recorded in one results file (ms since the epoch)."""
    columns = data["result_columns"]
    if "started_at" not in columns:
        return data.get("date") or 0
    i = columns.index("started_at")
    return max((row[i] for row in data["results"].values() if len(row) > i and row[i]),
               default=data.get("date") or 0)


def latest_results(machine_dir, commit=None):
    """(path, data) of the results file of ``commit`` or else the most recently run one."""
    found = []
    for name in os.listdir(machine_dir):
        if name.endswith(".json") and name != "machine.json":
            path = os.path.join(machine_dir, name)
            data = load_asv_json(path)
            if commit is None or data.get("commit_hash", "").startswith(commit):
                found.append((newest_run(data), path, data))
    if not found:
        raise SystemExit(f"report: no results{' for ' + commit if commit else ''} in {machine_dir}")
    _, path, data = max(found, key=lambda t: t[0])
    return path, data


# --- one value per benchmark and parameter set ----------------------------------------------

@dataclass
class Measurement:
    name: str              # module.Class.method
    module: str
    cls: str
    method: str
    kind: str              # "time", "peakmem", "track", ...
    unit: str
    params: dict           # param name -> repr string (as asv stores it)
    value: float


def split_name(name):
    """"conv.Conv2d.time_x" -> ("conv", "Conv2d", "time_x"); functions get cls ""."""
    parts = name.split(".")
    if len(parts) >= 3:
        return ".".join(parts[:-2]), parts[-2], parts[-1]
    return ".".join(parts[:-1]), "", parts[-1]


def measurements(data, benchmarks):
    """Flatten one results file into Measurements (skipped/failed parameter sets dropped)."""
    columns = data["result_columns"]
    out = []
    for name, row in sorted(data["results"].items()):
        cell = dict(zip(columns, row))
        values, params = cell.get("result"), cell.get("params") or []
        if values is None:
            continue
        meta = benchmarks.get(name, {})
        names = meta.get("param_names") or [f"p{i}" for i in range(len(params))]
        module, cls, method = split_name(name)
        kind = meta.get("type") or method.split("_", 1)[0]
        unit = meta.get("unit") or ("bytes" if kind == "peakmem" else "seconds")
        for combo, value in zip(itertools.product(*params), values):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            out.append(Measurement(name, module, cls, method, kind, unit,
                                   dict(zip(names, combo)), float(value)))
    return out


# --- FLOP counts declared in the benchmark modules -------------------------------------------

def literal(text):
    """A parameter value back from asv's repr string ("(32, 3, 28, 28)" -> tuple)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_benchmark_attrs(benchmark_dir, names):
    """{benchmark name: timed function} for the benchmarks whose module imports."""
    parent, package = os.path.split(os.path.abspath(benchmark_dir))
    if parent not in sys.path:
        sys.path.insert(0, parent)
    functions, broken = {}, set()
    for name in names:
        module, cls, method = split_name(name)
        if module in broken:
            continue
        try:
            mod = importlib.import_module(f"{package}.{module}")
        except Exception as exc:  # a broken or unimportable module: no FLOP counts for it
            print(f"report: cannot import {module} ({type(exc).__name__}: {exc}); no GFLOP/s for it",
                  file=sys.stderr)
            broken.add(module)
            continue
        owner = getattr(mod, cls, None) if cls else mod
        fn = getattr(owner, method, None)
        if fn is not None:
            functions[name] = fn
    return functions


def flop_count(fn, params):
    """FLOPs declared by ``fn.flops`` for these parameters, or None."""
    count = getattr(fn, "flops", None)
    if count is None:
        return None
    try:
        return float(count(*(literal(v) for v in params.values())))
    except Exception:
        return None


def sgemm_rate(rows_by_name, functions):
    """(name, GFLOP/s) of the best result of the benchmark marked as the sgemm reference."""
    best = None
    for name, fn in functions.items():
        if not getattr(fn, "sgemm_reference", False):
            continue
        for m in rows_by_name.get(name, []):
            count = flop_count(fn, m.params)
            if count and m.value > 0:
                rate = count / m.value / 1e9
                if best is None or rate > best[1]:
                    best = (name, rate)
    return best


# --- pairing nbdl with PyTorch ---------------------------------------------------------------

@dataclass
class Row:
    name: str              # the nbdl benchmark (or the twin's when nbdl has none)
    kind: str
    unit: str
    params: dict
    nbdl: float = None
    torch: float = None
    flops: float = None

    @property
    def ratio(self):
        if self.nbdl is None or self.torch is None or self.torch <= 0:
            return None
        return self.nbdl / self.torch

    def gflops(self, value):
        if self.flops is None or value is None or self.kind != "time" or value <= 0:
            return None
        return self.flops / value / 1e9


def twin_name(m):
    """The PyTorch twin's benchmark name of an nbdl measurement."""
    return f"{m.module}.{TWIN_PREFIX}{m.cls}.{m.method}"


def is_twin(m):
    return m.cls.startswith(TWIN_PREFIX) and m.cls[len(TWIN_PREFIX):][:1].isupper()


def matches(twin_params, params):
    """True when the twin's parameters agree with ``params`` on every name they share."""
    return all(params[k] == v for k, v in twin_params.items() if k in params)


def pair(ms, functions=None):
    """Rows joining each nbdl measurement with its twin's (same shared parameters)."""
    functions = functions or {}
    by_name = {}
    for m in ms:
        by_name.setdefault(m.name, []).append(m)
    rows, used = [], set()
    for m in ms:
        if is_twin(m):
            continue
        row = Row(m.name, m.kind, m.unit, m.params, nbdl=m.value,
                  flops=flop_count(functions[m.name], m.params) if m.name in functions else None)
        for t in by_name.get(twin_name(m), []):
            if matches(t.params, m.params):
                row.torch = t.value
                used.add(id(t))
                break
        rows.append(row)
    for m in ms:  # a twin result with no nbdl result beside it still shows
        if is_twin(m) and id(m) not in used:
            rows.append(Row(m.name.replace(f".{TWIN_PREFIX}", ".", 1), m.kind, m.unit,
                            m.params, torch=m.value))
    rows.sort(key=lambda r: r.name)  # stable: parameter order kept within a benchmark
    return rows, by_name


# --- formatting ---------------------------------------------------------------------------

def fmt_value(value, unit):
    if value is None:
        return "-"
    if unit == "seconds":
        for scale, suffix in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
            if value >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value * 1e9:.3g} ns"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.4g} {unit}"


def fmt_ratio(ratio):
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def fmt_params(params):
    return ", ".join(str(literal(v)) for v in params.values())


def table(rows, peak=None):
    """The report as a list of rows of strings, header first."""
    header = ["benchmark", "params", "nbdl", "torch", "nbdl/torch",
              "nbdl GFLOP/s", "torch GFLOP/s", "of sgemm"]
    out = [header]
    for r in rows:
        g_n, g_t = r.gflops(r.nbdl), r.gflops(r.torch)
        out.append([
            r.name, fmt_params(r.params), fmt_value(r.nbdl, r.unit), fmt_value(r.torch, r.unit),
            fmt_ratio(r.ratio),
            f"{g_n:.1f}" if g_n is not None else "-",
            f"{g_t:.1f}" if g_t is not None else "-",
            f"{100 * g_n / peak:.0f}%" if g_n is not None and peak else "-",
        ])
    return out


def render(cells, markdown=False):
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
        lines += ["| " + " | ".join(c) + " |" for c in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    left = {0, 1}
    return "\n".join(
        "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in cells)


def plot(rows, path, title):
    """Horizontal bars of nbdl/torch time per benchmark (log scale; left of 1 = nbdl faster).
    Returns the path, or None when matplotlib is missing or nothing is paired."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    paired = [r for r in rows if r.kind == "time" and r.ratio is not None]
    if not paired:
        return None
    labels = [f"{r.name.split('.', 1)[-1]} [{fmt_params(r.params)}]" for r in paired]
    ratios = [r.ratio for r in paired]
    fig, ax = plt.subplots(figsize=(11, 0.28 * len(paired) + 1.5))
    colors = ["tab:green" if x <= 1 else "tab:red" for x in ratios]
    y = range(len(paired))
    ax.barh(y, [x - 1.0 for x in ratios], left=1.0, color=colors)  # bars grow out of 1x
    ax.set_xscale("log")
    ax.margins(x=0.12)  # room for the labels at both ends
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set_ylim(len(paired) - 0.5, -0.5)  # first row on top, no empty band
    ax.set_xlabel("nbdl time / PyTorch time (log scale; < 1: nbdl faster)")
    ax.set_title(title, fontsize=9)
    for yi, x in zip(y, ratios):
        ax.text(x, yi, f" {fmt_ratio(x)} ", va="center",
                ha="left" if x >= 1 else "right", fontsize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- command line ---------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(HERE, "asv.conf.json"), help="asv.conf.json to read")
    p.add_argument("--results-dir", help="asv results folder (default: the one asv.conf.json names)")
    p.add_argument("--machine", help="machine name (default: this host's, or the only one)")
    p.add_argument("--commit", help="commit hash prefix (default: the most recently run results)")
    p.add_argument("--bench", help="only benchmarks whose name matches this regular expression")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--png", help="bar chart path (default: <results dir>/../report.png)")
    p.add_argument("--no-png", action="store_true", help="do not write the bar chart")
    p.add_argument("--no-flops", action="store_true", help="do not import the benchmarks for FLOP counts")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    results_dir, benchmark_dir = asv_dirs(args.config)
    results_dir = args.results_dir or results_dir
    machine = pick_machine(results_dir, args.machine)
    path, data = latest_results(os.path.join(results_dir, machine), args.commit)
    bench_json = os.path.join(results_dir, "benchmarks.json")
    benchmarks = load_asv_json(bench_json) if os.path.exists(bench_json) else {}
    ms = measurements(data, benchmarks)
    if args.bench:
        ms = [m for m in ms if re.search(args.bench, m.name)]
    functions = {} if args.no_flops else load_benchmark_attrs(benchmark_dir, sorted({m.name for m in ms}))
    rows, by_name = pair(ms, functions)
    peak = sgemm_rate(by_name, functions)

    title = f"nbdl vs PyTorch on {machine}, commit {data.get('commit_hash', '?')[:8]}"
    print(f"{title} ({data.get('env_name', '?')})")
    if peak:
        print(f"sgemm reference: {peak[0]} = {peak[1]:.1f} GFLOP/s")
    print(render(table(rows, peak[1] if peak else None), markdown=args.markdown))
    if not args.no_png:
        png = args.png or os.path.join(os.path.dirname(results_dir), "report.png")
        if plot(rows, png, title):
            print(f"chart: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
