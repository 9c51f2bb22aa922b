"""Build script: the table of compiled extensions.

Every module in ``EXTENSIONS`` whose ``.pyx`` exists is cythonized and compiled at
build time (``build_ext``), so an sdist carries only the Cython sources, never the
generated C. A new compiled module is one line in the table.

Release builds (the default) compile with ``-O3 -g0`` and link with ``-Wl,-S``
(strip debug symbols): the wheel carries no DWARF. ``VTPU_DEBUG=1`` builds with
``-O0 -g``, Cython line tracing, and writes Cython's annotated HTML beside each
``.pyx``.
"""
import glob
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = bool(os.environ.get("VTPU_DEBUG"))

# Compiled modules. vtpu._core is required: the package does not import without it.
# A module whose .pyx is absent is not built (the package falls back to its
# pure-Python twin, e.g. vtpu/protocol.py for vtpu._cprotocol).
EXTENSIONS = [
    ("vtpu._core", "vtpu/_core.pyx"),
    ("vtpu._cprotocol", "vtpu/_cprotocol.pyx"),
    ("vtpu._cserver", "vtpu/_cserver.pyx"),
    ("vtpu._cclient", "vtpu/_cclient.pyx"),
    ("vtpu._cengine", "vtpu/_cengine.pyx"),
]
REQUIRED = {"vtpu._core", "vtpu._cserver", "vtpu._cclient", "vtpu._cengine"}

COMPILE_ARGS = ["-O0", "-g"] if DEBUG else ["-O3", "-g0"]
LINK_ARGS = [] if DEBUG else ["-Wl,-S"]
MACROS = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")] + (
    [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else [])


def _extensions():
    """The table's entries whose source exists, as setuptools Extensions.

    :raises FileNotFoundError: a required module's ``.pyx`` is missing (an incomplete
        sdist or checkout would otherwise build a wheel that cannot import).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    missing = [src for name, src in EXTENSIONS
               if name in REQUIRED and not os.path.exists(os.path.join(here, src))]
    if missing:
        raise FileNotFoundError(f"required Cython source(s) missing: {', '.join(missing)}")
    # The core's units (vtpu/core/*.pxi, *.pxd) are included, not compiled on their own:
    # a change to any of them rebuilds every extension that may include or cimport them.
    depends = sorted(glob.glob(os.path.join(here, "vtpu", "*.pxd"))
                     + glob.glob(os.path.join(here, "vtpu", "core", "*.pxd"))
                     + glob.glob(os.path.join(here, "vtpu", "core", "*.pxi")))
    return [Extension(name, [src], depends=depends, define_macros=MACROS,
                      extra_compile_args=COMPILE_ARGS, extra_link_args=LINK_ARGS)
            for name, src in EXTENSIONS if os.path.exists(os.path.join(here, src))]


class CythonBuildExt(build_ext):
    """``build_ext`` that cythonizes when it builds. numpy and Cython are imported only
    here, and ``sdist`` (which lists the extensions' sources) sees the ``.pyx`` files,
    not generated C."""

    def build_extensions(self):
        import numpy
        from Cython.Build import cythonize

        for ext in self.extensions:
            ext.include_dirs.append(numpy.get_include())
        generated = cythonize(
            self.extensions,
            language_level=3,
            annotate=DEBUG,
            compiler_directives={"embedsignature": True, "linetrace": DEBUG},
        )
        # Keep setuptools' own Extension objects (they carry its build state); only
        # their sources change, from .pyx to the generated .c.
        by_name = {e.name: e for e in generated}
        for ext in self.extensions:
            ext.sources = by_name[ext.name].sources
        super().build_extensions()


setup(ext_modules=_extensions(), cmdclass={"build_ext": CythonBuildExt})
