"""Module, Parameter, state_dict, initializers and save/load."""
import math
import os

import numpy as np
import pytest

import nbdl
import nbdl.nn as nn
from nbdl.nn import init


class Affine(nn.Module):
    def __init__(self, n, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(nbdl.ones(n, device=device, dtype=dtype))
        self.bias = nn.Parameter(nbdl.zeros(n, device=device, dtype=dtype))
        self.register_buffer("count", nbdl.zeros(1, device=device, dtype=dtype))
        self.register_buffer("scratch", nbdl.zeros(1, device=device, dtype=dtype), persistent=False)

    def forward(self, x):
        return x * self.weight + self.bias


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(Affine(3), Affine(3))
        self.head = Affine(3)
        self.none = None

    def forward(self, x):
        return self.head(self.body(x))


def test_registration_names_and_traversal():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias", "head.weight", "head.bias"]
    assert list(net.state_dict()) == ["body.0.weight", "body.0.bias", "body.0.count", "body.1.weight",
                                      "body.1.bias", "body.1.count", "head.weight", "head.bias", "head.count"]
    assert len(list(net.modules())) == 5 and len(list(net.children())) == 2
    assert isinstance(net.body[1], Affine) and len(net.body) == 2
    net.eval()
    assert not net.training and not net.body[0].training
    net.train()
    assert net.head.training


def test_state_dict_round_trip_keeps_dtype_and_is_strict(tmp_path):
    a, b = Net(), Net().double()
    sd = {k: np.full(v.shape, 2.0, dtype=np.float64) for k, v in a.state_dict().items()}
    a.load_state_dict(sd)
    assert a.head.weight.dtype == np.float32                  # copied into the existing dtype
    np.testing.assert_array_equal(a.head.weight.numpy(), [2, 2, 2])
    path = tmp_path / "ckpt.npz"
    nbdl.save(a.state_dict(), path)
    b.load_state_dict(nbdl.load(path))
    assert b.head.weight.dtype == np.float64
    np.testing.assert_array_equal(b.body[0].bias.numpy(), [2, 2, 2])
    with pytest.raises(KeyError, match="missing keys.*head.bias"):
        b.load_state_dict({k: v for k, v in sd.items() if k != "head.bias"})
    with pytest.raises(ValueError, match=r"'head.weight' has shape \(4,\).*\(3,\)"):
        b.load_state_dict({**sd, "head.weight": np.zeros(4)})
    np.testing.assert_array_equal(b.head.weight.numpy(), [2, 2, 2])   # a failed load changes nothing
    res = b.load_state_dict({"head.weight": np.ones(3), "extra": np.ones(1)}, strict=False)
    assert "extra" in res.unexpected_keys and "head.bias" in res.missing_keys


def test_to_device_moves_parameters_in_place(device):
    net = Net()
    p = net.head.weight
    net.to(device)
    assert p.device.startswith(device) and net.head.weight is p
    y = net(nbdl.ones(2, 3, device=device))
    y.sum().backward()
    np.testing.assert_allclose(net.body[0].weight.grad.numpy(), [2.0, 2.0, 2.0])
    net.zero_grad()
    assert net.body[0].weight.grad is None


def test_save_is_atomic_and_load_refuses_pickles(tmp_path):
    path = tmp_path / "x.npz"
    nbdl.save({"a": np.arange(3), "nested": {"b": 1.5, "name": "lenet"}}, path)
    back = nbdl.load(path)
    assert back["nested"]["name"].item() == "lenet" and back["nested"]["b"].item() == 1.5
    with pytest.raises(TypeError, match="not plain data"):
        nbdl.save({"bad": object()}, tmp_path / "y.npz")
    assert not (tmp_path / "y.npz").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    np.save(tmp_path / "evil.npy", np.array([object()], dtype=object), allow_pickle=True)
    import zipfile
    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as z:
        z.write(tmp_path / "evil.npy", "w.npy")
    with pytest.raises(ValueError, match="not a readable"):
        nbdl.load(tmp_path / "evil.npz")
    (tmp_path / "trunc.npz").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="not a readable"):
        nbdl.load(tmp_path / "trunc.npz")


def test_initializers_match_their_formulas():
    nbdl.manual_seed(0)
    w = nbdl.empty(200, 300)
    init.xavier_uniform_(w)
    bound = math.sqrt(6 / 500)
    assert abs(w.numpy()).max() <= bound and abs(w.numpy()).max() > 0.95 * bound
    init.kaiming_normal_(w, nonlinearity="relu")
    assert abs(w.numpy().std() - math.sqrt(2 / 300)) < 0.05 * math.sqrt(2 / 300)
    init.kaiming_uniform_(w, a=math.sqrt(5))
    b = math.sqrt(3 / 300) * math.sqrt(2 / 6)
    assert abs(w.numpy()).max() <= b + 1e-7
    q = nbdl.empty(5, 8, dtype=nbdl.float64)
    init.orthogonal_(q, gain=2.0)
    np.testing.assert_allclose(q.numpy() @ q.numpy().T, 4 * np.eye(5), atol=1e-12)
    conv = nbdl.empty(6, 3, 5, 5)
    assert init._calculate_fan_in_and_fan_out(conv) == (75, 150)
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    with pytest.raises(ValueError, match="nonlinearity"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.xavier_uniform_(nbdl.empty(3))


def test_initializers_give_same_bits_on_every_device(device):
    nbdl.manual_seed(7)
    a = init.normal_(nbdl.empty(4, 4, device=device)).numpy()
    nbdl.manual_seed(7)
    b = init.normal_(nbdl.empty(4, 4)).numpy()
    np.testing.assert_array_equal(a, b)
