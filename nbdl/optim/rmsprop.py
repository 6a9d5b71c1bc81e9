"""RMSprop (torch.optim.RMSprop)."""
from nbdl.optim.optimizer import Optimizer, flat

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    r"""RMSprop, step for step like ``torch.optim.RMSprop``.

    For parameter p with gradient g (g <- -g when ``maximize``)::

        g <- g + weight_decay * p
        v <- alpha * v + (1 - alpha) * g * g
        centered:  a <- a + (1 - alpha) * (g - a);  d = sqrt(v - a * a) + eps
        else:      d = sqrt(v) + eps
        momentum > 0:  b <- momentum * b + g / d;  p <- p - lr * b
        else:          p <- p - lr * g / d

    State per parameter: ``step``, ``square_avg`` (v), ``momentum_buffer`` (b, when
    momentum > 0), ``grad_avg`` (a, when centered).
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group):
        for key in ("lr", "eps", "momentum", "weight_decay", "alpha"):
            self._check(group, key)

    def _init_state(self, p, group, state):
        state["step"] = 0
        state["square_avg"] = self._zeros_like(p)

    def _update(self, K, p, param, grad, group, state):
        # buffers for options switched on after the first step start at zero, like torch's
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = self._zeros_like(p)
        if group["centered"] and "grad_avg" not in state:
            state["grad_avg"] = self._zeros_like(p)
        state["step"] += 1
        buf = flat(state["momentum_buffer"]) if group["momentum"] > 0 else None
        gavg = flat(state["grad_avg"]) if group["centered"] else None
        K.rmsprop_step(param, grad, flat(state["square_avg"]), gavg, buf, group["lr"], group["alpha"],
                       group["eps"], group["weight_decay"], group["momentum"], group["maximize"])
