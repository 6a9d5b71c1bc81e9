"""asv_bench/report.py on a small synthetic asv results tree written here."""
import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("asv_report", os.path.join(ROOT, "asv_bench", "report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A benchmark module the report imports for FLOP counts and the sgemm marker.
BENCH_SOURCE = '''
class Conv:
    def time_conv_forward(self, device, algorithm, shape):
        pass
    time_conv_forward.flops = lambda device, algorithm, shape: 2e9 * shape[0]

class TorchConv:
    def time_conv_forward(self, device, shape):
        pass

class Gemm:
    def time_sgemm(self):
        pass
    time_sgemm.flops = lambda: 2 * 2048 ** 3
    time_sgemm.sgemm_reference = True
'''

COLUMNS = ["result", "params", "version", "started_at", "duration"]


def result_row(values, params, started_at):
    return [values, params, "v1", started_at, 1.0]


def write_tree(tmp_path, conv_ms, started_at, commit):
    """asv.conf.json, one benchmark module, benchmarks.json and one results file."""
    (tmp_path / "asv.conf.json").write_text(
        '{\n  // comments are allowed, as in asv\n  "version": 1, "results_dir": "res",'
        ' "benchmark_dir": "synthetic_benches"\n}\n')
    pkg = tmp_path / "synthetic_benches"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ops.py").write_text(BENCH_SOURCE)
    machine = tmp_path / "res" / "box"
    machine.mkdir(parents=True, exist_ok=True)
    (machine / "machine.json").write_text(json.dumps({"machine": "box", "version": 1}))
    conv_params = [["'cpu'", "'cuda'"], ["'direct'", "'im2col'"], ["(1,)", "(4,)"]]
    twin_params = [["'cpu'", "'cuda'"], ["(1,)", "(4,)"]]
    benchmarks = {
        "ops.Conv.time_conv_forward": {"param_names": ["device", "algorithm", "shape"],
                                       "params": conv_params, "type": "time", "unit": "seconds"},
        "ops.TorchConv.time_conv_forward": {"param_names": ["device", "shape"],
                                            "params": twin_params, "type": "time", "unit": "seconds"},
        "ops.Gemm.time_sgemm": {"param_names": [], "params": [], "type": "time", "unit": "seconds"},
        "ops.Conv.peakmem_conv": {"param_names": ["device"], "params": [["'cpu'"]],
                                  "type": "peakmem", "unit": "bytes"},
        "ops.TorchConv.peakmem_conv": {"param_names": ["device"], "params": [["'cpu'"]],
                                       "type": "peakmem", "unit": "bytes"},
        "version": 2,
    }
    (tmp_path / "res" / "benchmarks.json").write_text(json.dumps(benchmarks))
    ms = 1e-3
    # product order: (cpu, direct, 1) (cpu, direct, 4) (cpu, im2col, 1) (cpu, im2col, 4) then cuda (n/a)
    conv = [conv_ms[0] * ms, conv_ms[1] * ms, None, 2 * ms, None, None, None, None]
    results = {
        "ops.Conv.time_conv_forward": result_row(conv, conv_params, started_at),
        "ops.TorchConv.time_conv_forward": result_row([1 * ms, 4 * ms, None, None], twin_params, started_at),
        "ops.Gemm.time_sgemm": result_row([0.1], [], started_at),
        "ops.Conv.peakmem_conv": result_row([100 * 2**20], [["'cpu'"]], started_at),
        "ops.TorchConv.peakmem_conv": result_row([200 * 2**20], [["'cpu'"]], started_at),
    }
    data = {"commit_hash": commit, "env_name": "existing-py", "date": 1, "params": {"machine": "box"},
            "python": "3.11", "requirements": {}, "env_vars": {}, "result_columns": COLUMNS,
            "results": results, "durations": {}, "version": 2}
    (machine / f"{commit[:8]}-existing-py.json").write_text(json.dumps(data))
    return str(tmp_path / "asv.conf.json")


@pytest.fixture
def tree(tmp_path):
    write_tree(tmp_path, conv_ms=(50.0, 50.0), started_at=1000, commit="0" * 40)   # older run
    config = write_tree(tmp_path, conv_ms=(2.0, 8.0), started_at=2000, commit="abcdef12" + "0" * 32)
    yield config
    sys.modules.pop("synthetic_benches", None)
    sys.modules.pop("synthetic_benches.ops", None)
    if str(tmp_path) in sys.path:  # added by report.load_benchmark_attrs
        sys.path.remove(str(tmp_path))


def rows_of(report, config):
    results_dir, bench_dir = report.asv_dirs(config)
    machine = report.pick_machine(results_dir)
    _, data = report.latest_results(os.path.join(results_dir, machine))
    benchmarks = report.load_asv_json(os.path.join(results_dir, "benchmarks.json"))
    ms = report.measurements(data, benchmarks)
    functions = report.load_benchmark_attrs(bench_dir, sorted({m.name for m in ms}))
    rows, by_name = report.pair(ms, functions)
    return rows, report.sgemm_rate(by_name, functions), data


def test_latest_results_and_pairing(report, tree):
    rows, peak, data = rows_of(report, tree)
    assert data["commit_hash"].startswith("abcdef12")          # the most recent run wins
    conv = {(r.params["algorithm"], r.params["shape"]): r for r in rows
            if r.name == "ops.Conv.time_conv_forward"}
    assert set(conv) == {("'direct'", "(1,)"), ("'direct'", "(4,)"), ("'im2col'", "(4,)")}  # n/a dropped
    # The twin has no "algorithm": it pairs with every algorithm on (device, shape).
    assert conv["'direct'", "(1,)"].ratio == pytest.approx(2.0)
    assert conv["'direct'", "(4,)"].ratio == pytest.approx(2.0)
    assert conv["'im2col'", "(4,)"].ratio == pytest.approx(0.5)
    # 2e9 * 4 FLOPs in 8 ms; the same count divides the twin's 4 ms.
    assert conv["'direct'", "(4,)"].gflops(conv["'direct'", "(4,)"].nbdl) == pytest.approx(1000.0)
    assert conv["'direct'", "(4,)"].gflops(conv["'direct'", "(4,)"].torch) == pytest.approx(2000.0)
    name, rate = peak
    assert name == "ops.Gemm.time_sgemm" and rate == pytest.approx(2 * 2048**3 / 0.1 / 1e9)
    mem = [r for r in rows if r.kind == "peakmem"]
    assert len(mem) == 1 and mem[0].ratio == pytest.approx(0.5) and mem[0].gflops(mem[0].nbdl) is None


def test_main_prints_table_and_writes_chart(report, tree, tmp_path, capsys):
    png = tmp_path / "chart.png"
    assert report.main(["--config", tree, "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "sgemm reference: ops.Gemm.time_sgemm" in out
    line = next(ln for ln in out.splitlines() if "im2col, (4,)" in ln)
    assert "2 ms" in line and "4 ms" in line and "0.50x" in line and "4000.0" in line
    assert "%" in line                                        # fraction of the sgemm rate
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists()
    else:
        assert png.stat().st_size > 1000


def test_markdown_filter_and_commit(report, tree, capsys):
    assert report.main(["--config", tree, "--markdown", "--no-png", "--no-flops",
                        "--bench", "peakmem", "--commit", "000000"]) == 0
    out = capsys.readouterr().out.splitlines()
    table = [ln for ln in out if ln.startswith("|")]
    assert table[0].startswith("| benchmark | params | nbdl | torch | nbdl/torch")
    assert len(table) == 3 and "100.0 MiB" in table[2] and "200.0 MiB" in table[2]


def test_unknown_machine_is_a_clear_error(report, tree):
    with pytest.raises(SystemExit, match="no results for machine 'nope'"):
        report.main(["--config", tree, "--machine", "nope", "--no-png"])
