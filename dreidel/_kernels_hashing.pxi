# ALSH hashing kernels (included by _kernels.pyx)
