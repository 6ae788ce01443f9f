"""Optimizers, learning-rate schedules and gradient clipping (`dreidel.optim`).

First-order: SGD, Adam, AdamW. Curvature-aware: DiagonalNewton (diagonal Gauss–Newton/Hutchinson/Fisher),
BlockDiagonal (block-wise Fisher with Cholesky solves), KFAC (Kronecker factors for Linear layers).
"""
from dreidel.optim.optimizer import Optimizer
from dreidel.optim.sgd import SGD
from dreidel.optim.adamw import Adam, AdamW
from dreidel.optim.newton import DiagonalNewton
from dreidel.optim.block_diagonal import BlockDiagonal
from dreidel.optim.kfac import KFAC
from dreidel.optim.clip import clip_grad_norm_, clip_grad_value_
from dreidel.optim.schedules import (CosineAnnealingLR, LambdaLR, LinearWarmup, LRScheduler, StepLR,
                                     WarmupCosine)
from dreidel.optim import lr_scheduler

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "DiagonalNewton", "BlockDiagonal", "KFAC", "clip_grad_norm_",
           "clip_grad_value_", "LRScheduler", "LambdaLR", "StepLR", "CosineAnnealingLR", "LinearWarmup",
           "WarmupCosine", "lr_scheduler"]
