"""temporary: removed when the importer moves to dreidel.ops (the ops live in dreidel.ops.convolution,
dreidel.ops.pool, dreidel.ops.resample, dreidel.ops.norm and dreidel.ops.math)."""
from dreidel.ops.convolution import conv, conv_transpose  # noqa: F401
from dreidel.ops.norm import group_norm  # noqa: F401
from dreidel.ops.pool import avg_pool, max_pool  # noqa: F401
