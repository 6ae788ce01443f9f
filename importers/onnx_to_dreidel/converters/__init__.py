"""The op converters, one file per family; importing this package registers them all.

elementwise  arithmetic, comparison, logic, Where, Max/Min/Sum/Mean, Clip, unary functions
activation   Gelu, LeakyRelu, Elu, Selu, Softplus, HardSigmoid, HardSwish, Mish, PRelu (→ nn.PReLU), Softmax
reduce       Reduce*, ArgMax/ArgMin, CumSum
linalg       MatMul, Gemm (→ nn.Linear), Einsum
norm         LayerNormalization (→ nn.LayerNorm), Instance/BatchNormalization (→ nn.*NormNd), GroupNormalization
conv         Conv, ConvTranspose (→ nn.ConvNd / nn.ConvTransposeNd)
pool         MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool
resize       Resize
cast         Cast, CastLike
constant     Constant, ConstantOfShape, Range, EyeLike
shape        Identity, Dropout, Shape, Size, Reshape, Flatten, (Un)Squeeze, Transpose, Expand, Tile, Concat, Split, Pad
index        Slice, Gather (→ nn.Embedding), GatherElements, GatherND, ScatterND, Trilu, OneHot, NonZero
quantize     DequantizeLinear, QuantizeLinear
"""
from importers.onnx_to_dreidel.converters import (activation, cast, constant, conv, elementwise, index,  # noqa: F401
                                                  linalg, norm, pool, quantize, reduce, resize, shape)
