"""SGD with momentum, dampening, Nesterov momentum and weight decay (torch.optim.SGD)."""
import math

from nbdl.optim.optimizer import Optimizer, flat

__all__ = ["SGD"]


class SGD(Optimizer):
    r"""Stochastic gradient descent, step for step like ``torch.optim.SGD``.

    For each parameter p with gradient g (g <- -g when ``maximize``)::

        g <- g + weight_decay * p
        b <- g                                  (first step)
        b <- momentum * b + (1 - dampening) * g (later steps)       } if momentum != 0
        g <- g + momentum * b  (nesterov)   or   g <- b             }
        p <- p - lr * g

    State per parameter: ``momentum_buffer`` (only when momentum != 0).
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group):
        self._check(group, "lr")
        self._check(group, "momentum")
        self._check(group, "dampening", low=-math.inf)
        self._check(group, "weight_decay")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{type(self).__name__}: Nesterov momentum requires a momentum and zero "
                             f"dampening, got momentum={group['momentum']!r}, "
                             f"dampening={group['dampening']!r}")

    def _update(self, K, p, param, grad, group, state):
        momentum = group["momentum"]
        first = False
        buf = None
        if momentum != 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = self._empty_like(p)
                first = True                    # the kernel sets the buffer to the gradient
            buf = state["momentum_buffer"]
        K.sgd_step(param, grad, None if buf is None else flat(buf), group["lr"], momentum,
                   group["dampening"], group["weight_decay"], group["nesterov"], group["maximize"],
                   first)

