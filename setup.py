"""Build script: declares the one compiled extension, ``vtpu._core``.

``VTPU_DEBUG=1`` builds with line tracing and writes Cython's annotated HTML.
"""
import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = bool(os.environ.get("VTPU_DEBUG"))

extensions = [
    Extension(
        "vtpu._core",
        ["vtpu/_core.pyx"],
        # _core.pyx and _core.pxd include the units of vtpu/core/ (relative includes):
        # a change to any of them rebuilds the extension.
        depends=["vtpu/_core.pxd"]
        + sorted(glob.glob("vtpu/core/*.pxd") + glob.glob("vtpu/core/*.pxi")),
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
        + ([("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []),
        extra_compile_args=["-O3"] if not DEBUG else ["-O0", "-g"],
    ),
    Extension("vtpu._cprotocol", ["vtpu/_cprotocol.pyx"],
              extra_compile_args=["-O3"] if not DEBUG else ["-O0", "-g"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=DEBUG,
        compiler_directives={"embedsignature": True, "linetrace": DEBUG},
    )
)
