"""`nbdl train`, `nbdl evaluate`, `nbdl sample`: the training loop and its checkpoints.

The loop is the one a PyTorch user writes (zero_grad, forward, loss, backward, clip,
step, schedule step), wrapped in what a run needs to be judged and resumed: a tqdm
bar per epoch (loss, accuracy, samples/s), an evaluation after every epoch, and after
every epoch a checkpoint, metrics.csv and curves.png in the run directory.
"""

import math
import os
import time

import numba
import numpy as np
from tqdm.auto import tqdm

import nbdl

from .checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, resolve_checkpoint_path, save_checkpoint
from .errors import CLIError
from .plotting import matplotlib_missing_message, plot_curves
from .runs import RunDir, default_run_dir
from .tasks import TASKS

__all__ = ["train_command", "evaluate_command", "sample_command", "make_optimizer", "warmup_cosine"]

OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam", "adadelta")
SCHEDULES = ("cosine", "constant")
WARMUP_FRACTION = 0.1  # of all steps, linear warmup before the cosine decay
SLOW_FIRST_BATCH_S = 3.0  # a first batch slower than this was compiling kernels
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"

# flags whose value is part of a run: on --resume they come from the checkpoint
MODEL_FLAGS = {"cell": "cell", "hidden": "hidden_size", "layers": "num_layers"}
TRAIN_FLAGS = ("optimizer", "lr", "batch_size", "schedule", "seed", "shift", "seq_len", "clip")


# --------------------------------------------------------------------------- setup

def require_device(name):
    """The canonical device string, or a CLIError that says how to get CUDA."""
    try:
        return nbdl.device.require(name)
    except (RuntimeError, ValueError) as e:
        raise CLIError(str(e)) from None


def set_threads(n):
    """Use `n` threads in the parallel CPU kernels (None: leave Numba's default, one per core)."""
    if n is None:
        return
    limit = numba.config.NUMBA_NUM_THREADS
    if n > limit:
        raise CLIError(f"--threads {n}: at most {limit} (the NUMBA_NUM_THREADS this process started with)")
    numba.set_num_threads(n)


def make_optimizer(name, params, lr):
    """The optimizer called `name` ("momentum" is SGD with Nesterov momentum 0.9)."""
    optim = nbdl.optim
    if name == "sgd":
        return optim.SGD(params, lr=lr)
    if name == "momentum":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return optim.RMSprop(params, lr=lr)
    if name == "adam":
        return optim.Adam(params, lr=lr)
    if name == "adadelta":
        return optim.Adadelta(params, lr=lr)
    raise CLIError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def warmup_cosine(total_steps, warmup_fraction=WARMUP_FRACTION):
    """lr multiplier per step: linear warmup to 1, then cosine decay to 0 at `total_steps`.

    f(s) = (s + 1) / W for s < W, else 0.5 * (1 + cos(pi * (s - W) / (total - W))),
    W = round(warmup_fraction * total). Warmup lets Adam's moment estimates settle
    before the largest steps; the decay buys the last percent of accuracy.
    """
    warmup = max(1, round(warmup_fraction * total_steps))

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_scheduler(optimizer, schedule, total_steps):
    """A per-step LambdaLR: warmup + cosine, or constant."""
    factor = warmup_cosine(total_steps) if schedule == "cosine" else (lambda step: 1.0)
    return nbdl.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_config(args, task_cls, ckpt):
    """(model flags, training config) from the flags, the task's defaults and a checkpoint.

    A resumed run keeps its model and training settings; a flag that would change one
    of them is refused rather than silently ignored. Only --epochs (the new total),
    --device, --algo and --out may differ.
    """
    flags = {k: getattr(args, k, None) for k in TRAIN_FLAGS if hasattr(args, k)}
    if ckpt is None:
        cfg = {k: (v if v is not None else task_cls.defaults.get(k)) for k, v in flags.items()}
        if cfg.get("lr") is None:
            cfg["lr"] = task_cls.default_lr[cfg["optimizer"]]
        cfg["epochs"] = args.epochs or task_cls.defaults["epochs"]
        return cfg
    cfg = dict(ckpt.train_config)
    for k, v in flags.items():
        if v is not None and cfg.get(k) != v:
            raise CLIError(
                f"--{k.replace('_', '-')} {v} differs from the checkpoint's {cfg.get(k)}: "
                f"a resumed run keeps its settings (only --epochs, --device, --algo and --out may change)"
            )
    for flag, key in MODEL_FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None and ckpt.model_config.get(key) != v:
            raise CLIError(f"--{flag} {v} differs from the checkpoint's model ({key}={ckpt.model_config.get(key)})")
    cfg["epochs"] = args.epochs or ckpt.train_config.get("epochs", ckpt.epoch)
    if cfg["epochs"] <= ckpt.epoch:
        raise CLIError(
            f"the checkpoint has already trained {ckpt.epoch} epochs; pass --epochs N with N > {ckpt.epoch} to train on"
        )
    return cfg


def fill_model_flags(args, task_cls):
    for flag in MODEL_FLAGS:
        if hasattr(args, flag) and getattr(args, flag) is None:
            setattr(args, flag, task_cls.defaults[flag])


# --------------------------------------------------------------------------- train

def train_command(args):
    """`nbdl train lenet|charlm`: returns the process exit code."""
    t_begin = time.perf_counter()
    task_cls = TASKS[args.model]
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(args.resume, expect_kind=args.model, command=f"nbdl train {args.model} --resume")
    cfg = resolve_config(args, task_cls, ckpt)
    fill_model_flags(args, task_cls)
    device = require_device(args.device)
    set_threads(args.threads)
    if getattr(args, "algo", None):
        nbdl.set_conv_algo(args.algo)

    task = task_cls() if ckpt is None or "vocab" not in ckpt.model_config else task_cls(ckpt.model_config["vocab"])
    model_config = ckpt.model_config if ckpt else task.model_config(args)
    _, n_batches, _ = task.epoch(1, cfg["seed"], cfg["batch_size"], cfg)
    if n_batches == 0:
        raise CLIError(f"--batch-size {cfg['batch_size']} leaves no complete batch in the training data: "
                       f"use a smaller one")
    steps_per_epoch = min(n_batches, args.max_batches or n_batches)
    if args.out:
        out = RunDir(args.out)
    elif ckpt is not None:  # a resumed run continues in its own directory
        out = RunDir(os.path.dirname(resolve_checkpoint_path(args.resume)) or ".")
    else:
        out = RunDir(default_run_dir(args.model))
    out.check()  # fail now, not at the first checkpoint
    try:
        return _train(args, task, cfg, model_config, steps_per_epoch, device, out, ckpt, t_begin)
    finally:
        out.cleanup()  # removes the run directory only if nothing was written


def _train(args, task, cfg, model_config, steps_per_epoch, device, out, ckpt, t_begin):
    """The epochs of a run whose settings and output directory are checked; returns the exit code."""
    nbdl.manual_seed(cfg["seed"])
    model = task.build_model(model_config, device)
    optimizer = make_optimizer(cfg["optimizer"], model.parameters(), cfg["lr"])
    scheduler = make_scheduler(optimizer, cfg["schedule"], cfg["epochs"] * steps_per_epoch)
    rows, start = [], 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.optimizer_state)
        scheduler.load_state_dict(ckpt.scheduler_state)
        rows, start = list(ckpt.metrics), ckpt.epoch

    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    print(f"nbdl {nbdl.__version__}: {task.title}")
    print(task.describe())
    n_threads = numba.get_num_threads()
    threads = f" ({n_threads} thread{'s' if n_threads > 1 else ''})" if device == "cpu" else ""
    print(f"model: {type(model).__name__}, {n_params:,} parameters; device {device}{threads}; "
          f"{cfg['optimizer']} lr {cfg['lr']:g} ({cfg['schedule']} schedule), batch {cfg['batch_size']}, "
          f"{cfg['epochs']} epochs")
    if start:
        print(f"resuming after epoch {start} from {resolve_checkpoint_path(args.resume)}")
    print(f"output: {out.path}")

    ckpt_path = out.file(CHECKPOINT_NAME)
    epoch = start
    try:
        for epoch in range(start + 1, cfg["epochs"] + 1):
            t0 = time.perf_counter()
            loss, acc, rate = run_epoch(task, model, optimizer, scheduler, cfg, device, epoch, args.max_batches,
                                        first=epoch == start + 1)
            row = {"epoch": epoch, **task.train_metrics(loss, acc)}
            row.update(task.evaluate(model, device, limit=args.eval_limit))
            row.update(lr=scheduler.get_last_lr()[0], seconds=time.perf_counter() - t0, samples_per_s=rate)
            rows.append(row)
            _write_outputs(out, ckpt_path, task, model, optimizer, scheduler, cfg, model_config, epoch, rows)
            tqdm.write(f"epoch {epoch:>{len(str(cfg['epochs']))}}/{cfg['epochs']}  {task.epoch_summary(row)}  "
                       f"{row['seconds']:.1f} s")
    except KeyboardInterrupt:
        done = epoch - 1
        if done > start:
            print(f"\ninterrupted during epoch {epoch}; resume with: "
                  f"nbdl train {task.kind} --resume {ckpt_path} --epochs {cfg['epochs']}")
        else:
            print("\ninterrupted before the first epoch finished: nothing saved")
        return 130

    print(f"done in {_duration(time.perf_counter() - t_begin)}: {task.final_summary(rows[-1])}")
    task.after_training(model, device, args, cfg)
    print(f"saved {ckpt_path}, {out.file('metrics.csv')}"
          + (f", {out.file('curves.png')}" if os.path.exists(out.file("curves.png")) else ""))
    return 0


def run_epoch(task, model, optimizer, scheduler, cfg, device, epoch, max_batches, first):
    """One pass over the training data. Returns (mean loss, accuracy, samples/s)."""
    n_samples, n_batches, batches = task.epoch(epoch, cfg["seed"], cfg["batch_size"], cfg)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    task.start_epoch()
    desc = f"epoch {epoch}/{cfg['epochs']}"
    # disable=None: no bar when stderr is not a terminal (logs, CI); the epoch lines remain
    bar = tqdm(total=n_batches, desc=desc + (" (compiling kernels)" if first else ""), unit="batch",
               bar_format=BAR_FORMAT, leave=False, dynamic_ncols=True, disable=None)
    loss_sum, correct, count = 0.0, 0, 0
    t_start = time.perf_counter()
    t_warm = warm_count = None  # samples/s is counted after the first batch, which may compile
    model.train()
    for i, batch in enumerate(batches):
        if i == n_batches:
            break
        optimizer.zero_grad()
        loss, c, n = task.loss(model, batch, device)
        loss.backward()
        if cfg.get("clip"):
            nbdl.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * n
        correct += c
        count += n
        postfix = task.bar_postfix(loss_sum / count, correct / count)
        if t_warm is None:
            t_warm, warm_count = time.perf_counter(), count
            if first:
                bar.set_description(desc)
                if t_warm - t_start > SLOW_FIRST_BATCH_S:
                    tqdm.write(f"first batch took {t_warm - t_start:.0f} s: numba compiled the kernels "
                               f"(they are cached on disk: the next run starts faster)")
        else:
            postfix[f"{task.unit}/s"] = f"{(count - warm_count) / (time.perf_counter() - t_warm):,.0f}"
        bar.set_postfix(postfix, refresh=False)  # a dict keeps its order (keyword arguments get sorted)
        bar.update(1)
    bar.close()
    now = time.perf_counter()
    rate = (count - warm_count) / (now - t_warm) if count > (warm_count or count) else count / (now - t_start)
    return loss_sum / max(1, count), correct / max(1, count), rate


def _write_outputs(out, ckpt_path, task, model, optimizer, scheduler, cfg, model_config, epoch, rows):
    """Checkpoint, metrics.csv and curves.png after an epoch (each written atomically)."""
    save_checkpoint(ckpt_path, Checkpoint(
        kind=task.kind, model_config=model_config, model_state=model.state_dict(), train_config=cfg,
        optimizer_state=optimizer.state_dict(), scheduler_state=scheduler.state_dict(),
        epoch=epoch, metrics=rows, extra=task.extra(),
    ))
    out.write_metrics(rows)
    panels, hlines = task.plot_panels(task.extra())
    if not plot_curves(out.file("curves.png"), rows, panels, task.title, hlines) and epoch == rows[0]["epoch"]:
        tqdm.write(matplotlib_missing_message)


def _duration(seconds):
    m, s = divmod(seconds, 60)
    return f"{int(m)} min {s:.0f} s" if m else f"{s:.1f} s"


# --------------------------------------------------------------------------- evaluate / sample

def _load_model(args, command, kinds=None):
    ckpt = load_checkpoint(args.checkpoint, expect_kind=kinds, command=command)
    if ckpt.kind not in TASKS:
        raise CLIError(f"{args.checkpoint} holds an unknown model kind {ckpt.kind!r}")
    device = require_device(args.device)
    set_threads(args.threads)
    task_cls = TASKS[ckpt.kind]
    task = task_cls(ckpt.model_config["vocab"]) if "vocab" in ckpt.model_config else task_cls()
    model = task.build_model(ckpt.model_config, device)
    try:
        model.load_state_dict(ckpt.model_state)
    except (KeyError, ValueError) as e:
        raise CLIError(f"{args.checkpoint}: the weights do not fit the model ({e})") from None
    model.eval()
    return ckpt, task, model, device


def evaluate_command(args):
    """`nbdl evaluate CHECKPOINT`: the held-out metrics of a saved model."""
    ckpt, task, model, device = _load_model(args, "nbdl evaluate")
    t0 = time.perf_counter()
    metrics = task.evaluate(model, device, limit=args.limit)
    print(f"{ckpt.kind} checkpoint {resolve_checkpoint_path(args.checkpoint)} (epoch {ckpt.epoch}), device {device}")
    if task.kind == "lenet":
        y = task.data.y_test[: len(task.last_predictions)]
        print(f"test accuracy {100 * metrics['test_acc']:.2f}%  test loss {metrics['test_loss']:.4f}  "
              f"({len(y)} digits, {time.perf_counter() - t0:.1f} s)")
        per_class = [100 * np.mean(task.last_predictions[y == c] == c) for c in range(10) if np.any(y == c)]
        print("per digit: " + "  ".join(f"{c}: {a:.0f}%" for c, a in enumerate(per_class)))
    else:
        print(f"validation {metrics['val_bpc']:.3f} bits/char, next-char accuracy {100 * metrics['val_acc']:.2f}%  "
              f"(unigram {task.unigram_bpc:.3f}, gzip -9 {task.gzip_bpc:.3f}; {time.perf_counter() - t0:.1f} s)")
    return 0


def sample_command(args):
    """`nbdl sample CHECKPOINT`: text from a charlm, or predictions on a few digits from a lenet."""
    ckpt, task, model, device = _load_model(args, "nbdl sample")
    rng = np.random.default_rng(args.seed)
    if task.kind == "charlm":
        try:
            text = task.sample(model, device, prime=args.prime, length=args.length,
                               temperature=args.temperature, rng=rng)
        except ValueError as e:
            raise CLIError(f"--prime: {e}") from None
        print(text)
    else:
        print(digits_as_text(task, model, device, args.count, rng))
    return 0


ASCII_RAMP = " .:-=+*#%@"


def digits_as_text(task, model, device, count, rng):
    """`count` random test digits drawn in ASCII side by side, with the model's guesses."""
    idx = rng.choice(len(task.data.y_test), size=min(count, len(task.data.y_test)), replace=False)
    x = task.data.x_test[idx]
    with nbdl.no_grad():
        logits = model(nbdl.tensor(x, device=device)).numpy().astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # 28x28 -> 14 rows x 28 columns: terminal cells are about twice as tall as wide
    img = x[:, 0].reshape(len(idx), 14, 2, 28).mean(2)
    art = [["".join(ASCII_RAMP[min(9, int(v * 10))] for v in row) for row in im] for im in img]
    heads = [f"label {task.data.y_test[i]} -> {p[k].argmax()} ({100 * p[k].max():.0f}%)".ljust(28)
             for k, i in enumerate(idx)]
    lines = ["   ".join(heads)] + ["   ".join(a[r] for a in art) for r in range(14)]
    return "\n".join(line.rstrip() for line in lines)
