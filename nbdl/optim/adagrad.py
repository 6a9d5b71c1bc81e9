"""Adagrad (torch.optim.Adagrad)."""
from nbdl.optim.optimizer import Optimizer, flat
from nbdl.tensor import full

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    r"""Adagrad, step for step like ``torch.optim.Adagrad``.

    At step t (1, 2, ...), for parameter p with gradient g (g <- -g when ``maximize``)::

        g <- g + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        s <- s + g * g                      (s starts at initial_accumulator_value)
        p <- p - clr * g / (sqrt(s) + eps)

    State per parameter (created with the optimizer, as in torch): ``step``, ``sum`` (s).
    """

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, *, maximize=False):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group):
        for key in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            self._check(group, key)

    def _on_add_group(self, group):
        for p in group["params"]:
            self.state[p] = {}
            self._init_state(p, group, self.state[p])

    def _init_state(self, p, group, state):
        state["step"] = 0
        state["sum"] = full(p.shape, float(group["initial_accumulator_value"]), dtype=p.dtype,
                            device=p.device)

    def _update(self, K, p, param, grad, group, state):
        state["step"] += 1
        K.adagrad_step(param, grad, flat(state["sum"]), state["step"], group["lr"], group["lr_decay"],
                       group["eps"], group["weight_decay"], group["maximize"])
