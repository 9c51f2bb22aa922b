"""Proves that the compiled extension vtpu._core is the module under test.

If vtpu._core cannot be imported the suite fails here (set VTPU_ALLOW_NO_EXT=1 to turn
that into a skip, e.g. on a machine without a compiler), so a missing build can never
pass silently while every other test skips or falls back.
"""
import importlib
import importlib.machinery
import inspect
import os
import types

import pytest

PUBLIC = [
    "parse_coord", "parse_coords", "format_coord", "format_coords", "parse_pattern",
    "format_pattern", "parse_delta", "apply_delta", "pack", "unpack", "pack_many",
    "unpack_many", "morton_encode", "morton_decode", "bigmin", "litmax", "match", "l1",
    "hamming", "topk", "xxh64", "jump_hash", "jump_hash_many", "prefix_hashes", "route",
    "moe", "moe_pattern", "lower_bound", "lex_scan", "z_scan", "lex_sort_order",
    "merge_sorted",
]


def _import_core():
    try:
        return importlib.import_module("vtpu._core")
    except ImportError as e:
        if os.environ.get("VTPU_ALLOW_NO_EXT"):
            pytest.skip(f"vtpu._core not importable and VTPU_ALLOW_NO_EXT is set: {e}")
        pytest.fail(f"the compiled extension vtpu._core does not import: {e}")


def test_core_is_a_compiled_extension():
    core = _import_core()
    path = core.__file__
    assert path is not None
    assert any(path.endswith(sfx) for sfx in importlib.machinery.EXTENSION_SUFFIXES), path
    assert isinstance(core.__loader__, importlib.machinery.ExtensionFileLoader)
    assert not path.endswith((".py", ".pyc"))


@pytest.mark.parametrize("name", PUBLIC)
def test_public_functions_are_compiled(name):
    core = _import_core()
    fn = getattr(core, name)
    assert callable(fn)
    # Cython functions are builtin functions or cyfunctions, never Python functions.
    assert not isinstance(fn, types.FunctionType), f"{name} is a Python function"
    assert not inspect.isfunction(fn)
    kind = type(fn).__name__
    assert kind == "builtin_function_or_method" or "cython_function" in kind, kind
    assert not hasattr(fn, "__code__") or not isinstance(fn.__code__, types.CodeType) \
        or fn.__code__.co_filename.endswith((".pyx", ".pxi")), name


def test_package_uses_the_same_extension():
    core = _import_core()
    import vtpu

    assert importlib.import_module("vtpu._core") is core
    assert os.path.dirname(core.__file__) == os.path.dirname(vtpu.__file__)


def test_type_stub_covers_every_public_function():
    import ast

    core = _import_core()
    stub = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "vtpu", "_core.pyi")
    with open(stub, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    stubbed = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    public = {n for n in dir(core) if not n.startswith("_")
              and callable(getattr(core, n)) and not isinstance(getattr(core, n), type)}
    assert public - stubbed == set(), "functions without a stub in vtpu/_core.pyi"
    assert stubbed - public == set(), "stubs for functions vtpu._core does not have"
