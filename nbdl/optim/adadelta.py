"""Adadelta (torch.optim.Adadelta)."""
from nbdl.optim.optimizer import Optimizer, flat

__all__ = ["Adadelta"]


class Adadelta(Optimizer):
    r"""Adadelta, step for step like ``torch.optim.Adadelta``.

    For parameter p with gradient g (g <- -g when ``maximize``)::

        g <- g + weight_decay * p
        v <- rho * v + (1 - rho) * g * g
        d = sqrt(u + eps) / sqrt(v + eps) * g
        u <- rho * u + (1 - rho) * d * d
        p <- p - lr * d

    State per parameter: ``step``, ``square_avg`` (v), ``acc_delta`` (u).
    """

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group):
        self._check(group, "lr")
        self._check(group, "rho", 0.0, 1.0)
        self._check(group, "eps")
        self._check(group, "weight_decay")

    def _init_state(self, p, group, state):
        state["step"] = 0
        state["square_avg"] = self._zeros_like(p)
        state["acc_delta"] = self._zeros_like(p)

    def _update(self, K, p, param, grad, group, state):
        state["step"] += 1
        K.adadelta_step(param, grad, flat(state["square_avg"]), flat(state["acc_delta"]), group["lr"],
                        group["rho"], group["eps"], group["weight_decay"], group["maximize"])
