"""Engine-level benchmarks on 1M scrolls (in-process, no network).

* CRANGE for prefix, middle, suffix, interval and mixed patterns (10 and 100 results)
  beside a Python linear scan of the prototype's kind and a numpy-vectorised scan;
* CGET with a packed 18-byte key beside a dict lookup over the same keys;
* CNEAREST k=10 beside numpy (distances + argpartition).

Run: ``pytest benchmarks/bench_engine.py --benchmark-only``. The ratios are in each
benchmark's ``extra_info`` and in benchmarks/README.md.
"""
import numpy as np
import pytest

from vtpu import _core
from vtpu.bench.common import fmt_coords
from vtpu.bench.crange import CRANGE_SHAPES, dataset_coords, numpy_scan, prototype_scan
from vtpu.engine import Engine

N = 1_000_000


@pytest.fixture(scope="module")
def data():
    arr = dataset_coords(N)
    eng = Engine()
    blob = _core.pack_many(arr)
    eng.put_many(blob, list(range(len(arr))))
    keys = [blob[i:i + 18] for i in range(0, len(blob), 18)]
    # The dict owns its key objects, as the engine's map does (its keys came from
    # put_many): lookups then compare bytes in both, instead of the dict taking CPython's
    # identity shortcut on the very objects it was built from.
    return {"arr": arr, "engine": eng, "keys": keys,
            "dict": {bytes(bytearray(k)): i for i, k in enumerate(keys)}}


SELECTIVE = [(shape, want, pat) for shape, pats in CRANGE_SHAPES.items()
             for want, pat in pats.items() if want <= 1000]


@pytest.mark.parametrize("shape,want,pat", SELECTIVE, ids=[f"{s}-{w}" for s, w, _ in SELECTIVE])
def test_crange_engine(benchmark, data, shape, want, pat):
    eng = data["engine"]
    p = _core.parse_pattern(pat)
    res = benchmark(eng.range, p)
    assert len(res) == len(numpy_scan(data["arr"], pat))
    benchmark.extra_info.update({"pattern": pat, "results": len(res),
                                 "plan": eng._index.last_plan})


@pytest.mark.parametrize("shape", list(CRANGE_SHAPES))
def test_crange_numpy_scan(benchmark, data, shape):
    pat = CRANGE_SHAPES[shape][10]
    res = benchmark(numpy_scan, data["arr"], pat)
    benchmark.extra_info.update({"pattern": pat, "results": len(res)})


@pytest.mark.parametrize("shape", list(CRANGE_SHAPES))
def test_crange_python_scan(benchmark, data, shape):
    pat = CRANGE_SHAPES[shape][10]
    strings = fmt_coords(data["arr"])
    res = benchmark.pedantic(prototype_scan, (strings, pat), rounds=1, iterations=1)
    benchmark.extra_info.update({"pattern": pat, "results": res})


def test_cget_packed_engine(benchmark, data):
    eng, keys = data["engine"], data["keys"]
    sample = keys[::997]

    def run():
        g = eng.get
        for k in sample:
            g(k)
    benchmark(run)
    benchmark.extra_info["lookups_per_round"] = len(sample)


def test_cget_dict_baseline(benchmark, data):
    d, keys = data["dict"], data["keys"]
    sample = keys[::997]

    def run():
        g = d.get
        for k in sample:
            g(k)
    benchmark(run)
    benchmark.extra_info["lookups_per_round"] = len(sample)


def test_cnearest_engine(benchmark, data):
    eng = data["engine"]
    q = data["arr"][12345]
    coords, dists = benchmark(eng.nearest, q, 10)
    ref = np.sort(np.abs(data["arr"].astype(np.int32) - q.astype(np.int32)).sum(1))[:10]
    assert dists.tolist() == ref.tolist()


def test_cnearest_numpy(benchmark, data):
    arr = data["arr"]
    q = arr[12345].astype(np.int32)

    def run():
        d = np.abs(arr.astype(np.int32) - q).sum(1)
        idx = np.argpartition(d, 10)[:10]
        return idx[np.argsort(d[idx])]
    benchmark(run)
