"""PyTorch's module name for the schedules: `from dreidel.optim.lr_scheduler import StepLR` works as
`torch.optim.lr_scheduler` does. The schedules themselves live in `dreidel.optim.schedules`."""
from dreidel.optim.schedules import (CosineAnnealingLR, LambdaLR, LinearWarmup, LRScheduler,  # noqa: F401
                                     StepLR, WarmupCosine)
