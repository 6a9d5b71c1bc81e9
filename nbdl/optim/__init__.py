"""Optimizers and learning-rate schedules (the torch.optim shape).

Each optimizer's update is one fused kernel per parameter on the parameter's
device (``nbdl.kernels.optim``); importing this package compiles nothing.
"""
from nbdl.optim import lr_scheduler
from nbdl.optim.adadelta import Adadelta
from nbdl.optim.adagrad import Adagrad
from nbdl.optim.adam import Adam, AdamW
from nbdl.optim.optimizer import Optimizer
from nbdl.optim.rmsprop import RMSprop
from nbdl.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "lr_scheduler"]
