"""Layers and models' building blocks (`dreidel.nn`), PyTorch-style."""
from dreidel.nn.module import Module, Parameter
from dreidel.nn.layers import (GELU, CrossEntropyLoss, Dropout, Embedding, Identity, KLDivLoss, L1Loss,
                               LayerNorm, Linear, ModuleDict, ModuleList, MSELoss, ReLU, RMSNorm, Sequential,
                               SiLU, Sigmoid, Softmax, Tanh)
from dreidel import functional
