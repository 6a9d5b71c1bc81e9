"""Adam and AdamW (torch.optim.Adam / torch.optim.AdamW)."""
from nbdl.optim.optimizer import Optimizer, check_hyper, flat

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    r"""Adam, step for step like ``torch.optim.Adam``.

    At step t (1, 2, ...), for parameter p with gradient g (g <- -g when ``maximize``)::

        g <- g + weight_decay * p          (Adam: L2 penalty through the gradient)
        m <- m + (1 - beta1) * (g - m)     (torch's lerp)
        v <- beta2 * v + (1 - beta2) * g * g
        v_max <- max(v_max, v); v <- v_max (amsgrad only)
        p <- p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    eps is added AFTER the bias-corrected square root, as in torch.
    State per parameter: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v), ``max_exp_avg_sq``.
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group):
        name = type(self).__name__
        self._check(group, "lr")
        self._check(group, "eps")
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            check_hyper(name, f"betas[{i}]", b, 0.0, 1.0, high_open=True)
        self._check(group, "weight_decay")

    def _init_state(self, p, group, state):
        state["step"] = 0
        state["exp_avg"] = self._zeros_like(p)
        state["exp_avg_sq"] = self._zeros_like(p)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = self._zeros_like(p)

    def _update(self, K, p, param, grad, group, state):
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = self._zeros_like(p)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        vmax = flat(state["max_exp_avg_sq"]) if group["amsgrad"] else None
        K.adam_step(param, grad, flat(state["exp_avg"]), flat(state["exp_avg_sq"]), vmax,
                    state["step"], group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                    self._decoupled, group["maximize"])


class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay, like ``torch.optim.AdamW``.

    Same as :class:`Adam` except that weight decay shrinks the parameter directly,
    before the Adam update: p <- p * (1 - lr * weight_decay); the gradient is left alone.
    Default weight_decay is 1e-2.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)
