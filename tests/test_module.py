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


def test_setattr_registers_over_plain_attributes_and_rejects_wrong_types():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.sub = None                  # a common "optional submodule" pattern
            self.sub = Affine(2)
            self.scale = 1.0
            self.scale = nn.Parameter(nbdl.ones(1))
    m = M()
    assert isinstance(m.sub, Affine) and isinstance(m.scale, nn.Parameter)
    assert list(m.state_dict()) == ["scale", "sub.weight", "sub.bias", "sub.count"]
    with pytest.raises(TypeError, match=r"cannot assign Tensor as parameter 'weight' \(Parameter or None expected\)"):
        m.sub.weight = nbdl.zeros(2)         # PyTorch refuses instead of silently unregistering
    with pytest.raises(TypeError, match=r"cannot assign int as child module 'sub'"):
        m.sub = 3
    with pytest.raises(TypeError, match=r"cannot assign ndarray as buffer 'count'"):
        m.sub.count = np.zeros(1)
    assert "sub.weight" in m.state_dict() and "sub.count" in m.state_dict()
    m.sub.weight = None                      # None is allowed: "no parameter"
    m.sub.count = nbdl.ones(1)
    assert "sub.weight" not in m.state_dict() and m.sub.count.numpy()[0] == 1.0
    m.sub = nn.Parameter(nbdl.zeros(1))      # a parameter may replace a child module
    assert [n for n, _ in m.named_parameters()] == ["scale", "sub"] and not list(m.children())


def test_register_buffer_persistence_can_change_and_sequential_slices_keep_names():
    a = Affine(2)
    a.register_buffer("scratch", nbdl.zeros(1))          # re-registered as persistent
    assert "scratch" in a.state_dict()
    with pytest.raises(KeyError, match="cannot be empty or contain"):
        a.register_buffer("x.y", nbdl.zeros(1))
    seq = nn.Sequential(Affine(1), Affine(1), Affine(1))
    assert [n for n, _ in seq[1:].named_parameters()] == ["1.weight", "1.bias", "2.weight", "2.bias"]


def test_state_dict_and_load_on_device(device):
    net = Net().to(device)
    sd = {k: np.full(v.shape, 3.0) for k, v in net.state_dict().items()}
    net.load_state_dict(sd)
    assert net.head.weight.device.startswith(device)
    np.testing.assert_array_equal(net.head.bias.numpy(), [3.0, 3.0, 3.0])
    net.double()
    assert net.head.weight.dtype == np.float64 and net.head.weight.device.startswith(device)


def test_init_fans_and_bounds_match_torch():
    torch = pytest.importorskip("torch")
    for shape in ((7, 5), (6, 3, 2, 2)):
        ours = init._calculate_fan_in_and_fan_out(nbdl.empty(*shape))
        assert ours == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(*shape))
    for nl, p in (("relu", None), ("tanh", None), ("leaky_relu", 0.3), ("selu", None), ("sigmoid", None)):
        assert init.calculate_gain(nl, p) == pytest.approx(torch.nn.init.calculate_gain(nl, p))
    w = nbdl.empty(64, 48)
    init.kaiming_uniform_(w, a=0.1, mode="fan_out", nonlinearity="leaky_relu")
    bound = torch.nn.init.calculate_gain("leaky_relu", 0.1) * math.sqrt(3 / 64)
    assert np.abs(w.numpy()).max() <= bound and np.abs(w.numpy()).max() > 0.95 * bound
    init.xavier_normal_(w, gain=2.0)
    assert abs(w.numpy().std() / (2.0 * math.sqrt(2 / 112)) - 1) < 0.05


def test_trunc_normal_stays_inside_and_rejects_empty_intervals():
    w = init.trunc_normal_(nbdl.empty(50, 4), mean=0.5, std=2.0, a=-1.0, b=1.0).numpy()
    assert w.min() >= -1.0 and w.max() <= 1.0 and w.std() > 0.3
    with pytest.raises(ValueError, match="need std > 0 and a < b"):
        init.trunc_normal_(nbdl.empty(3), a=1.0, b=-1.0)
    with pytest.raises(ValueError, match="holds almost none"):
        init.trunc_normal_(nbdl.empty(3), mean=0.0, std=1e-3, a=5.0, b=6.0)
