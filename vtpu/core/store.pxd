# The column store (store.pxi): content kinds shared with the result type (results.pxi),
# the key hash's slot markers and its hash function.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int64_t, uint64_t
from libc.string cimport memcpy

# How a row's content is held. In the store: CK_DEAD marks a deleted row; arena kinds
# keep their bytes at [off, off + len) of the arena; CK_OBJECT keeps a Python object in
# the object list at index off. In a result, CK_DEAD is a key where nothing is stored.
cdef enum ContentKind:
    CK_DEAD = 0     # deleted row / nothing stored
    CK_NONE = 1     # the content None (no bytes)
    CK_STR = 2      # str, as UTF-8 bytes
    CK_BYTES = 3    # bytes
    CK_ARRAY = 4    # numpy array: 4-byte type id (little-endian), then the raw C-order data
    CK_OBJECT = 5   # any other value, as a Python object
    CK_PACKED = 6   # a msgpack-encoded value, decoded when read

cdef enum:
    SLOT_EMPTY = 0              # hash slot never used
    SLOT_DELETED = 0xFFFFFFFF   # hash slot of a removed key (a tombstone)
    MAX_ROWS = 0xFFFFFFF0       # rows one store can hold (row + 1 fits a slot)
    MAX_ARRAY_TYPES = 65536     # distinct (dtype, shape) pairs kept in the arena


# Large buffers (key column, row records, arena, hash slots) come straight from the
# kernel: pages are resident only once written, growth moves pages instead of copying
# them, and a freed buffer goes back whole, so the malloc heap is neither used nor
# fragmented by them. What the heap's other large users (numpy temporaries of a
# compaction) leave free in it is given back by vtpu_trim_heap.
cdef extern from *:
    """
    #include <stdlib.h>
    #include <string.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    static void* vtpu_pages_resize(void* p, size_t old, size_t n) {
        void* q;
        if (n == 0) n = 1;
        if (p == NULL)
            q = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        else
            q = mremap(p, old ? old : 1, n, MREMAP_MAYMOVE);
        return q == MAP_FAILED ? NULL : q;
    }
    static void vtpu_pages_free(void* p, size_t n) {
        if (p != NULL) munmap(p, n ? n : 1);
    }
    #else
    static void* vtpu_pages_resize(void* p, size_t old, size_t n) {
        void* q = realloc(p, n ? n : 1);
        if (q != NULL && n > old) memset((char*)q + old, 0, n - old);
        return q;
    }
    static void vtpu_pages_free(void* p, size_t n) { free(p); }
    #endif
    #if defined(__GLIBC__)
    #include <malloc.h>
    static void vtpu_trim_heap(void) { malloc_trim(0); }
    static int vtpu_keep_heap(int below, int pad, int keep) {
        return mallopt(M_MMAP_THRESHOLD, below) && mallopt(M_TOP_PAD, pad)
            && mallopt(M_TRIM_THRESHOLD, keep);
    }
    #else
    static void vtpu_trim_heap(void) { }
    static int vtpu_keep_heap(int below, int pad, int keep) { return 0; }
    #endif
    """
    # Resize a page buffer (p NULL: a new one), new bytes zero; NULL when out of memory.
    void* vtpu_pages_resize(void* p, size_t old, size_t n) nogil
    void vtpu_pages_free(void* p, size_t n) nogil
    # Give the free pages of the malloc heap back to the system (glibc; else nothing).
    void vtpu_trim_heap() nogil
    # Take blocks below ``below`` bytes from the heap, grow it ``pad`` bytes at a time and
    # give its free top back only past ``keep`` bytes (glibc: whether all were set; else 0).
    int vtpu_keep_heap(int below, int pad, int keep) nogil


# The fixed-size fields of one row, together in 32 bytes: a point read touches one cache
# line for all of them (the keys are a column of their own, see KeyCols). The content
# reference packs into one word: offset (40 bits: a 1 TiB arena), length (21 bits: a
# content of 2 MiB or more is kept as an object instead) and kind (3 bits).
cdef extern from *:
    """
    typedef struct {
        uint64_t off : 40;
        uint64_t len : 21;
        uint64_t kind : 3;
        int64_t version;
        double created;
        double updated;
    } vtpu_row;
    #define VTPU_ROW_MAX_OFF ((int64_t)1 << 40)
    """
    ctypedef struct Row "vtpu_row":
        uint64_t off        # arena offset (arena kinds) or object slot (CK_OBJECT)
        uint64_t len        # arena bytes (arena kinds)
        uint64_t kind       # ContentKind
        int64_t version
        double created
        double updated
    const int64_t ROW_MAX_OFF "VTPU_ROW_MAX_OFF"   # arena size limit (1 TiB)

cdef enum:
    ROW_MAX_LEN = (1 << 21) - 1     # largest content kept in the arena


# The key column, native uint16 x 9 per row, in two runs: rows [0, m) are the sorted run
# (a read-only numpy array that the coordinate index shares as its main array), rows
# [m, n) the tail appended since the last compaction.
cdef struct KeyCols:
    const uint16_t* run
    Py_ssize_t m
    uint16_t* tail


# A gather reads rows scattered over the store: asking for a row's lines a few rows
# ahead hides most of each cache miss behind the work on the rows before it.
cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define vtpu_prefetch(p) __builtin_prefetch((const void*)(p))
    #else
    #define vtpu_prefetch(p) ((void)0)
    #endif
    """
    void prefetch "vtpu_prefetch"(const void* p) noexcept nogil

cdef enum:
    PREFETCH_AHEAD = 8   # rows ahead a gather asks for


cdef inline const uint16_t* kc_at(const KeyCols* kc, size_t r) noexcept nogil:
    if r < <size_t>kc.m:
        return kc.run + r * 9
    return kc.tail + (r - <size_t>kc.m) * 9


cdef struct KeyHash:
    uint32_t* slots     # row + 1, or SLOT_EMPTY / SLOT_DELETED
    Py_ssize_t cap      # number of slots, a power of two
    Py_ssize_t live     # slots holding a row
    Py_ssize_t deleted  # tombstone slots


cdef inline uint64_t key_hash(const unsigned char* k) noexcept nogil:
    """64-bit hash of an 18-byte packed key (multiply-xor, splitmix64 finish)."""
    cdef uint64_t a, b, c
    memcpy(&a, k, 8)
    memcpy(&b, k + 8, 8)
    c = <uint64_t>k[16] | (<uint64_t>k[17] << 8)
    a = a * 0x9E3779B185EBCA87ULL
    b = b * 0xC2B2AE3D27D4EB4FULL
    a ^= (b << 29) | (b >> 35)
    a ^= c * 0x165667B19E3779F9ULL
    a ^= a >> 30
    a *= 0xBF58476D1CE4E5B9ULL
    a ^= a >> 27
    a *= 0x94D049BB133111EBULL
    a ^= a >> 31
    return a
