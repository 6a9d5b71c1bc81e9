"""End to end: a small MLP learns an XOR-like toy problem with every optimizer, on every device.

The data are four Gaussian blobs at (+-1, +-1); the label is +1 where x*y > 0 and -1
elsewhere, so no linear model beats chance and the hidden layer has to do the work.
The loss is the mean squared error against the +-1 label; accuracy is sign agreement.
"""
import numpy as np
import pytest

import nbdl
import nbdl.functional as F
import nbdl.nn as nn
from nbdl import optim
from nbdl.device import simulator_enabled

HIDDEN = 16

# Step sizes that solve the toy in a few dozen full-batch steps. Adadelta's first steps are
# about sqrt(eps) * lr in size whatever the gradient, so it needs a large lr on a short run.
OPTIMIZERS = {
    "SGD": dict(lr=0.2, momentum=0.8, nesterov=True),
    "Adam": dict(lr=0.1),
    "AdamW": dict(lr=0.1, weight_decay=1e-3),
    "RMSprop": dict(lr=0.01),
    "Adagrad": dict(lr=0.1),
    "Adadelta": dict(lr=30.0),
}


def xor_blobs(n, seed=0):
    rng = np.random.default_rng(seed)
    corners = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1]], np.float32)
    which = np.arange(n) % 4
    x = corners[which] + 0.25 * rng.standard_normal((n, 2)).astype(np.float32)
    y = np.where(which < 2, 1.0, -1.0).astype(np.float32)[:, None]
    return x, y


def budget(device):
    """(batch size, steps, required loss ratio): the CUDA simulator runs every GPU thread as a
    Python thread, so there the run is shorter and the bar lower (still far from chance)."""
    if device != "cpu" and simulator_enabled():
        return 16, 6, 0.6
    return 64, 40, 0.1


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_mlp_learns_xor(device, name):
    batch, steps, ratio = budget(device)
    x, y = xor_blobs(batch)
    X, Y = nbdl.tensor(x, device=device), nbdl.tensor(y, device=device)
    nbdl.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, HIDDEN, device=device), nn.Tanh(), nn.Linear(HIDDEN, 1, device=device))
    opt = getattr(optim, name)(model.parameters(), **OPTIMIZERS[name])
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(X), Y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with nbdl.no_grad():
        pred = model(X).numpy()
    accuracy = float(np.mean(np.sign(pred) == y))
    assert losses[-1] < ratio * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert accuracy >= 0.9, f"{name}: accuracy {accuracy:.2f} (chance is 0.5)"
    assert all(p.device == nbdl.device.normalize(device) for p in model.parameters())
