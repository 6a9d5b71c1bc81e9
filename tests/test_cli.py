"""The `nbdl` command end to end on tiny settings: files written, resume, error messages.

Training runs use the hidden flags --max-batches / --eval-limit (a couple of batches per
epoch, a slice of the held-out data) and small models, so the file stays fast; the
module-scoped fixtures train each model once and the other tests reuse the checkpoints.
"""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

import nbdl
from nbdl.cli import main
from nbdl.cli import data as cli_data
from nbdl.cli import plotting as cli_plotting
from nbdl.cli.checkpoint import load_checkpoint, pack, unpack
from nbdl.cli.train import warmup_cosine

LENET_TINY = ["--epochs", "1", "--max-batches", "2", "--batch-size", "16", "--eval-limit", "64"]
CHARLM_TINY = ["--epochs", "1", "--max-batches", "2", "--batch-size", "4", "--seq-len", "8",
               "--hidden", "16", "--eval-limit", "300", "--sample-length", "20"]


def run(capsys, *argv):
    """main(argv) -> (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code, err, expected, exit_code=1):
    """One 'nbdl: error' (or argparse usage) message, the right exit code, no traceback."""
    assert code == exit_code, err
    assert expected in err
    assert "Traceback" not in err


def leftovers(directory):
    """Temporary files a crashed atomic write would have left behind."""
    return [f for f in os.listdir(directory) if f.startswith(".tmp-") or f.startswith(".write-test-")]


def read_metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lenet") / "run"
    code = main(["train", "lenet", *LENET_TINY, "--schedule", "constant", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def charlm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("charlm") / "run"
    code = main(["train", "charlm", *CHARLM_TINY, "--out", str(out)])
    assert code == 0
    return out


# --------------------------------------------------------------------------- help and info

@pytest.mark.parametrize("argv", [
    ["--help"], ["train", "--help"], ["train", "lenet", "--help"], ["train", "charlm", "--help"],
    ["evaluate", "--help"], ["sample", "--help"], ["info", "--help"],
])
def test_help(capsys, argv):
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "usage: nbdl" in out


def test_python_dash_m_and_clean_error_in_a_real_process(tmp_path):
    """`python -m nbdl` works, and a user error prints one line, exit 1, no traceback."""
    missing = tmp_path / "missing.npz"
    proc = subprocess.run([sys.executable, "-m", "nbdl", "evaluate", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"nbdl: error: checkpoint not found: {missing}"


def test_info(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    for needle in ("numba", "numpy", "CUDA", "threading layer", 'algo="auto"', "LeNet-5 conv1"):
        assert needle in out


# --------------------------------------------------------------------------- lenet

def test_train_lenet_writes_checkpoint_metrics_and_curves(lenet_run, capsys):
    assert (lenet_run / "checkpoint.npz").is_file()
    rows = read_metrics(lenet_run / "metrics.csv")
    assert len(rows) == 1
    assert {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds",
            "samples_per_s"} <= set(rows[0])
    assert 0.0 <= float(rows[0]["test_acc"]) <= 1.0
    pytest.importorskip("matplotlib")
    assert (lenet_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not leftovers(lenet_run)


def test_without_matplotlib_the_png_is_skipped_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli_plotting, "_pyplot", lambda: None)
    code, out, err = run(capsys, "train", "lenet", *LENET_TINY, "--max-batches", 1, "--out", tmp_path / "run")
    assert code == 0, err
    assert (out + err).count("curves.png skipped: matplotlib is not installed") == 1
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint.npz", "metrics.csv"]


def test_lenet_checkpoint_contents(lenet_run):
    ckpt = load_checkpoint(lenet_run / "checkpoint.npz", "lenet")
    assert ckpt.epoch == 1
    assert ckpt.train_config["optimizer"] == "adam"
    assert ckpt.model_state["features.0.weight"].shape == (6, 1, 5, 5)
    assert ckpt.optimizer_state["state"]  # Adam moments were saved
    assert ckpt.scheduler_state["last_epoch"] == 2


def test_resume_continues_exactly(lenet_run, tmp_path, capsys):
    """1 epoch + resume to 2 gives the same weights as 2 epochs in one go."""
    code, out, err = run(capsys, "train", "lenet", "--resume", lenet_run / "checkpoint.npz", "--epochs", 2,
                         "--max-batches", 2, "--eval-limit", 64, "--out", tmp_path / "resumed")
    assert code == 0, err
    assert "resuming after epoch 1" in out
    straight = tmp_path / "straight"
    code, _, err = run(capsys, "train", "lenet", *LENET_TINY[2:], "--epochs", 2, "--schedule", "constant",
                       "--out", straight)
    assert code == 0, err
    a = load_checkpoint(tmp_path / "resumed", "lenet")
    b = load_checkpoint(straight, "lenet")
    assert a.epoch == b.epoch == 2
    assert [r["epoch"] for r in a.metrics] == [1, 2]
    assert len(read_metrics(tmp_path / "resumed" / "metrics.csv")) == 2
    for k in b.model_state:
        np.testing.assert_array_equal(a.model_state[k], b.model_state[k], err_msg=k)


def test_evaluate_lenet(lenet_run, capsys):
    code, out, err = run(capsys, "evaluate", lenet_run, "--limit", 64)
    assert code == 0, err
    assert "test accuracy" in out and "per digit" in out


def test_sample_lenet_draws_digits(lenet_run, capsys):
    code, out, err = run(capsys, "sample", lenet_run / "checkpoint.npz", "--count", 2, "--seed", 0)
    assert code == 0, err
    assert out.count("label ") == 2
    assert len(out.splitlines()) == 15  # a header + 14 rows of pixels


# --------------------------------------------------------------------------- charlm

def test_train_charlm(charlm_run):
    rows = read_metrics(charlm_run / "metrics.csv")
    assert {"train_bpc", "val_bpc", "val_acc"} <= set(rows[0])
    ckpt = load_checkpoint(charlm_run, "charlm")
    assert ckpt.model_config["hidden_size"] == 16
    assert len(ckpt.model_config["vocab"]) == ckpt.model_state["decoder.bias"].shape[0]
    assert ckpt.extra["unigram_bpc"] > ckpt.extra["gzip_bpc"] > 1.0


def test_evaluate_and_sample_charlm(charlm_run, capsys):
    code, out, err = run(capsys, "evaluate", charlm_run, "--limit", 300)
    assert code == 0, err
    assert "bits/char" in out and "unigram" in out
    code, out, err = run(capsys, "sample", charlm_run, "--prime", "def ", "--length", 15, "--seed", 1)
    assert code == 0, err
    assert out.startswith("def ") and len(out.rstrip("\n")) >= 4 + 15 - 1


def test_train_charlm_two_layer_lstm(tmp_path, capsys):
    code, out, err = run(capsys, "train", "charlm", *CHARLM_TINY, "--max-batches", 1, "--cell", "lstm",
                         "--layers", 2, "--sample-length", 0, "--out", tmp_path / "run")
    assert code == 0, err
    config = load_checkpoint(tmp_path / "run", "charlm").model_config
    assert (config["cell"], config["num_layers"]) == ("lstm", 2)
    assert "sample" not in out


def test_sample_rejects_unknown_characters(charlm_run, capsys):
    code, _, err = run(capsys, "sample", charlm_run, "--prime", "\u00e9t\u00e9")
    assert_clean_error(code, err, "not in the model's vocabulary")


# --------------------------------------------------------------------------- bad input

def test_unknown_flag(capsys, tmp_path):
    code, _, err = run(capsys, "train", "lenet", "--bogus", "--out", tmp_path / "x")
    assert_clean_error(code, err, "unrecognized arguments: --bogus", exit_code=2)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--lr", "nan"), ("--batch-size", "-3")])
def test_bad_numbers(capsys, tmp_path, flag, value):
    code, _, err = run(capsys, "train", "lenet", flag, value, "--out", tmp_path / "x")
    assert_clean_error(code, err, f"argument {flag}", exit_code=2)
    assert not (tmp_path / "x").exists()


def test_missing_checkpoint(capsys, tmp_path):
    code, _, err = run(capsys, "evaluate", tmp_path / "nope.npz")
    assert_clean_error(code, err, "checkpoint not found")


def test_corrupt_checkpoint(capsys, tmp_path, lenet_run):
    bad = tmp_path / "bad.npz"
    bad.write_bytes((lenet_run / "checkpoint.npz").read_bytes()[:300])  # a truncated file
    code, _, err = run(capsys, "sample", bad)
    assert_clean_error(code, err, "cannot read checkpoint")
    plain = tmp_path / "plain.npz"
    np.savez(plain, weights=np.zeros(3))
    code, _, err = run(capsys, "evaluate", plain)
    assert_clean_error(code, err, "not an nbdl checkpoint")


def test_checkpoint_of_another_model(capsys, tmp_path, lenet_run):
    out = tmp_path / "x"
    code, _, err = run(capsys, "train", "charlm", "--resume", lenet_run / "checkpoint.npz", "--out", out)
    assert_clean_error(code, err, "holds a 'lenet' model")
    assert not out.exists()


def test_resume_refuses_changed_settings(capsys, lenet_run):
    ckpt = lenet_run / "checkpoint.npz"
    code, _, err = run(capsys, "train", "lenet", "--resume", ckpt, "--epochs", 3, "--lr", 0.5)
    assert_clean_error(code, err, "--lr 0.5 differs")
    code, _, err = run(capsys, "train", "lenet", "--resume", ckpt, "--epochs", 1)
    assert_clean_error(code, err, "already trained 1 epochs")


def test_unwritable_output_directory(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run(capsys, "train", "lenet", *LENET_TINY, "--out", blocker / "run")
    assert_clean_error(code, err, "cannot write to output directory")
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run(capsys, "train", "lenet", *LENET_TINY, "--out", locked / "run")
        assert_clean_error(code, err, "cannot write to output directory")
        assert os.listdir(locked) == []


def test_cuda_unavailable_says_how_to_get_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(nbdl.device, "cuda_available", lambda: False)
    code, _, err = run(capsys, "train", "lenet", "--device", "cuda", "--out", tmp_path / "x")
    assert_clean_error(code, err, "NUMBA_ENABLE_CUDASIM=1")
    assert "pip install" in err
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- pieces

def test_pack_unpack_round_trip():
    state = {"state": {0: {"step": 3, "m": np.arange(4.0)}}, "param_groups": [{"betas": (0.9, 0.99), "params": [0]}]}
    arrays = {}
    back = unpack(pack(state, arrays), arrays)
    assert back["state"][0]["step"] == 3 and back["param_groups"][0]["betas"] == (0.9, 0.99)
    np.testing.assert_array_equal(back["state"][0]["m"], np.arange(4.0))


def test_warmup_cosine():
    f = warmup_cosine(100)  # 10 warmup steps
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)


def test_digit_split_is_fixed_and_stratified():
    d = cli_data.load_digits()
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert np.bincount(d.y_train).tolist() == [400] * 10
    assert np.array_equal(cli_data.load_digits().y_test, d.y_test)


def test_text_split_and_unigram_baseline():
    t = cli_data.load_text()
    assert len(t.val) == pytest.approx(0.1 * (len(t.train) + len(t.val)), abs=1)
    assert t.decode(t.encode("def f(x):")) == "def f(x):"
    assert 4.0 < cli_data.unigram_bits_per_char(t.train, t.val, len(t.vocab)) < 5.5


def test_shift_images_moves_content():
    x = np.zeros((1, 1, 6, 6), np.float32)
    x[0, 0, 2, 3] = 1.0
    moved = cli_data.shift_images(np.repeat(x, 50, axis=0), 1, np.random.default_rng(0))
    assert moved.shape == (50, 1, 6, 6) and np.all(moved.sum(axis=(1, 2, 3)) == 1.0)
    where = np.argwhere(moved[:, 0] == 1.0)[:, 1:]
    assert np.abs(where - [2, 3]).max() == 1  # every shift is within 1 pixel, and some are not 0
