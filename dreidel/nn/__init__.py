"""Layers and models' building blocks (`dreidel.nn`), PyTorch-style."""
from dreidel.nn.module import Module, Parameter
from dreidel.nn.layers import (GELU, CrossEntropyLoss, Dropout, Embedding, Flatten, Identity, KLDivLoss, L1Loss,
                               LayerNorm, Linear, ModuleDict, ModuleList, MSELoss, ReLU, RMSNorm, Sequential,
                               SiLU, Sigmoid, Softmax, Tanh)
from dreidel.nn.conv import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d, AvgPool1d, AvgPool2d,
                             AvgPool3d, BatchNorm1d, BatchNorm2d, BatchNorm3d, Conv1d, Conv2d, Conv3d,
                             Conv3DSpectral, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, GroupNorm,
                             InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, MaxPool1d, MaxPool2d, MaxPool3d,
                             PReLU, Upsample)
from dreidel.nn.fitting import InputStatistics
from dreidel.nn.spectral import DeepSpectralLinear, LinearWHT
from dreidel.nn.lowrank import LowRankLinear, SpectralLowRankLinear
from dreidel.nn.alsh import ALSHSparseDense
from dreidel.nn.attention import KVCache, MultiHeadAttention, RotaryEmbedding
from dreidel import functional
from dreidel.nn import init
