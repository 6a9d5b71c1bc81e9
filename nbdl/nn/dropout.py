"""Dropout layer (torch.nn.Dropout): active in train(), the identity in eval()."""
from nbdl.kernels.dropout import check_p
from nbdl.nn.module import Module
from nbdl.ops.dropout import dropout

__all__ = ["Dropout"]


class Dropout(Module):
    """Zero each element with probability p while training, scaling the rest by 1/(1-p)."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        self.p = check_p("Dropout", p)
        self.inplace = inplace

    def forward(self, input):
        return dropout(input, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"
