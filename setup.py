"""Build the Cython extension dreidel._kernels with OpenMP and portable vector flags.

Flags are chosen by platform, never -march=native (a wheel must run on other CPUs and under
valgrind). DREIDEL_MARCH overrides the -march value ("" disables it). If the compiler has no
OpenMP the extension still builds, serial.
"""
import glob
import os
import platform
import subprocess
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def _compiler_accepts(flags):
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n"
                    if "-fopenmp" in flags else "int main(void){return 0;}\n")
        cmd = [cc, src, "-o", os.path.join(tmp, "probe")] + flags
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


def _flags():
    if sys.platform == "win32":
        return ["/O2", "/openmp"], []
    compile_args, link_args = ["-O3", "-ffp-contract=fast"], []
    machine = platform.machine().lower()
    march = os.environ.get("DREIDEL_MARCH")
    if march is None:
        march = {"x86_64": "x86-64-v3", "amd64": "x86-64-v3"}.get(machine, "")
    if march and _compiler_accepts([f"-march={march}"]):
        compile_args.append(f"-march={march}")
    if _compiler_accepts(["-fopenmp"]):
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    else:
        print("dreidel: compiler has no OpenMP; building the kernels serial", file=sys.stderr)
    return compile_args, link_args


compile_args, link_args = _flags()
extensions = [
    Extension(
        "dreidel._kernels",
        ["dreidel/_kernels.pyx"],
        # the included parts: a change to any of them rebuilds the extension
        depends=sorted(glob.glob("dreidel/_kernels_*.pxi") + glob.glob("dreidel/_kernels_*.h")),
        include_dirs=["dreidel", numpy.get_include()],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)
