# ---------------------------------------------------------------------------------------
# Hashing: xxh64 (bit-exact with the xxhash package) and jump consistent hash.
# ---------------------------------------------------------------------------------------

cimport cython
from libc.stdint cimport uint16_t, int32_t, uint64_t, int64_t

import numpy as np
from vtpu.errors import InterfaceError


cdef uint64_t P1 = 0x9E3779B185EBCA87ULL
cdef uint64_t P2 = 0xC2B2AE3D27D4EB4FULL
cdef uint64_t P3 = 0x165667B19E3779F9ULL
cdef uint64_t P4 = 0x85EBCA77C2B2AE63ULL
cdef uint64_t P5 = 0x27D4EB2F165667C5ULL


cdef inline uint64_t _rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t _read64(const unsigned char* p) noexcept nogil:
    # Little-endian read assembled byte by byte: correct on any host byte order.
    return (<uint64_t>p[0]) | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) \
        | (<uint64_t>p[3] << 24) | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) \
        | (<uint64_t>p[6] << 48) | (<uint64_t>p[7] << 56)


cdef inline uint64_t _read32(const unsigned char* p) noexcept nogil:
    return (<uint64_t>p[0]) | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) \
        | (<uint64_t>p[3] << 24)


cdef inline uint64_t _round(uint64_t acc, uint64_t inp) noexcept nogil:
    acc += inp * P2
    acc = _rotl(acc, 31)
    return acc * P1


cdef inline uint64_t _merge(uint64_t acc, uint64_t val) noexcept nogil:
    acc ^= _round(0, val)
    return acc * P1 + P4


cdef uint64_t _xxh64(const unsigned char* p, Py_ssize_t n, uint64_t seed) noexcept nogil:
    cdef const unsigned char* end = p + n
    cdef uint64_t h, v1, v2, v3, v4
    if n >= 32:
        v1 = seed + P1 + P2
        v2 = seed + P2
        v3 = seed
        v4 = seed - P1
        while p + 32 <= end:
            v1 = _round(v1, _read64(p))
            v2 = _round(v2, _read64(p + 8))
            v3 = _round(v3, _read64(p + 16))
            v4 = _round(v4, _read64(p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
    else:
        h = seed + P5
    h += <uint64_t>n
    while p + 8 <= end:
        h ^= _round(0, _read64(p))
        h = _rotl(h, 27) * P1 + P4
        p += 8
    if p + 4 <= end:
        h ^= _read32(p) * P1
        h = _rotl(h, 23) * P2 + P3
        p += 4
    while p < end:
        h ^= (<uint64_t>p[0]) * P5
        h = _rotl(h, 11) * P1
        p += 1
    h ^= h >> 33
    h *= P2
    h ^= h >> 29
    h *= P3
    h ^= h >> 32
    return h


cdef inline int32_t _jump(uint64_t key, int32_t n) noexcept nogil:
    cdef int64_t b = -1, j = 0
    while j < n:
        b = j
        key = key * 2862933555777941757ULL + 1
        j = <int64_t>((b + 1) * (<double>(1LL << 31) / <double>((key >> 33) + 1)))
    return <int32_t>b


def xxh64(data, uint64_t seed=0):
    """xxHash64 of a bytes-like object; equal to ``xxhash.xxh64_intdigest(data, seed)``.

    :raises InterfaceError: data is not bytes-like.
    """
    cdef const unsigned char[::1] v
    try:
        if data is None:
            raise TypeError
        v = data
    except (TypeError, ValueError):
        raise InterfaceError(f"xxh64 needs bytes, got {type(data).__name__}") from None
    if v.shape[0] == 0:
        return _xxh64(<const unsigned char*>b"", 0, seed)
    return _xxh64(&v[0], v.shape[0], seed)


def jump_hash(uint64_t key, int32_t n):
    """Jump consistent hash (Lamping & Veach) of a 64-bit key into n buckets.

    :returns: bucket in 0..n-1.
    :raises InterfaceError: n < 1.
    """
    if n < 1:
        raise InterfaceError(f"number of buckets must be >= 1, got {n}")
    return _jump(key, n)


@cython.boundscheck(False)
@cython.wraparound(False)
def jump_hash_many(keys, int32_t n):
    """Jump consistent hash of every key of a uint64 array into n buckets.

    :returns: (N,) int32 buckets.
    """
    if n < 1:
        raise InterfaceError(f"number of buckets must be >= 1, got {n}")
    if not isinstance(keys, np.ndarray) or keys.dtype != np.uint64 or keys.ndim != 1:
        raise InterfaceError("keys must be a 1-d uint64 array")
    keys = np.ascontiguousarray(keys)
    cdef Py_ssize_t i, m = keys.shape[0]
    out = np.empty(m, dtype=np.int32)
    if m == 0:
        return out
    cdef const uint64_t[::1] kv = keys
    cdef int32_t[::1] o = out
    with nogil:
        for i in range(m):
            o[i] = _jump(kv[i], n)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def prefix_hashes(arr, int level=3, uint64_t seed=0):
    """xxh64 of each row's packed first ``level`` components (2*level big-endian bytes).

    :param arr: (N, 9) uint16 coordinates.
    :param level: 1..9 components hashed.
    :returns: (N,) uint64.
    """
    _coords_arg(arr)
    if not 1 <= level <= NDIM:
        raise InterfaceError(f"level must be in 1..9, got {level}")
    cdef Py_ssize_t i, n = arr.shape[0]
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    cdef const uint16_t[:, ::1] a = arr
    cdef uint64_t[::1] o = out
    cdef unsigned char buf[KEY_BYTES]
    with nogil:
        for i in range(n):
            _pack_row(&a[i, 0], buf)
            o[i] = _xxh64(buf, 2 * level, seed)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def route(arr, int32_t n, int level=3):
    """CROUTE: the node (0..n-1) owning each coordinate.

    ``jump_hash(xxh64(packed first `level` components, seed 0), n)``, so a whole subtree
    sharing those components lands on one node and every client agrees.

    :returns: (N,) int32.
    """
    if n < 1:
        raise InterfaceError(f"number of nodes must be >= 1, got {n}")
    h = prefix_hashes(arr, level)
    return jump_hash_many(h, n)


@cython.boundscheck(False)
@cython.wraparound(False)
def moe(arr, int32_t n, int top_k=1):
    """CMOE over token coordinates: hash routing of each token to experts.

    Expert r of a token is ``jump_hash(xxh64(packed token, seed=r'), n)`` for the r-th
    seed r' that yields an expert not chosen yet (seeds 0, 1, 2, ...; after 16*top_k
    seeds the lowest unused experts fill in, so the result is always defined).

    :param arr: (N, 9) uint16 token coordinates.
    :param n: number of experts (>= 1).
    :param top_k: experts per token (1..n).
    :returns: (N,) int32 when top_k == 1, else (N, top_k) int32.
    """
    _coords_arg(arr)
    if n < 1:
        raise InterfaceError(f"number of experts must be >= 1, got {n}")
    if not 1 <= top_k <= n:
        raise InterfaceError(f"top_k must be in 1..{n}, got {top_k}")
    cdef Py_ssize_t i, m = arr.shape[0]
    out = np.empty((m, top_k), dtype=np.int32)
    cdef const uint16_t[:, ::1] a
    cdef int32_t[:, ::1] o = out
    cdef unsigned char buf[KEY_BYTES]
    if m:
        a = arr
        with nogil:
            for i in range(m):
                _pack_row(&a[i, 0], buf)
                _moe_row(buf, KEY_BYTES, n, top_k, &o[i, 0])
    return out[:, 0].copy() if top_k == 1 else out


cdef void _moe_row(const unsigned char* buf, Py_ssize_t nbytes, int32_t n, int top_k,
                   int32_t* out) noexcept nogil:
    cdef int got = 0, r, t
    cdef int32_t e, cand
    cdef bint dup
    for r in range(16 * top_k):
        if got == top_k:
            return
        e = _jump(_xxh64(buf, nbytes, <uint64_t>r), n)
        dup = False
        for t in range(got):
            if out[t] == e:
                dup = True
                break
        if not dup:
            out[got] = e
            got += 1
    cand = 0
    while got < top_k:
        dup = False
        for t in range(got):
            if out[t] == cand:
                dup = True
                break
        if not dup:
            out[got] = cand
            got += 1
        cand += 1


def moe_pattern(pattern, int32_t n, int top_k=1):
    """CMOE for one token given as a pattern: hashes its bounds.

    A pattern whose components are all concrete hashes exactly like that coordinate;
    otherwise the 36 bytes packed lo || packed hi are hashed.

    :returns: int expert (top_k == 1) or a list of top_k experts.
    """
    pattern = _pattern_arg(pattern)
    if n < 1:
        raise InterfaceError(f"number of experts must be >= 1, got {n}")
    if not 1 <= top_k <= n:
        raise InterfaceError(f"top_k must be in 1..{n}, got {top_k}")
    cdef const uint16_t[:, ::1] p = pattern
    cdef unsigned char buf[2 * KEY_BYTES]
    cdef Py_ssize_t nbytes = KEY_BYTES
    _pack_row(&p[0, 0], buf)
    if not (pattern[0] == pattern[1]).all():
        _pack_row(&p[1, 0], buf + KEY_BYTES)
        nbytes = 2 * KEY_BYTES
    out = np.empty(top_k, dtype=np.int32)
    cdef int32_t[::1] o = out
    _moe_row(buf, nbytes, n, top_k, &o[0])
    return int(out[0]) if top_k == 1 else [int(x) for x in out]
