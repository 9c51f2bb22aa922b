# The column store (store.pxi): content kinds shared with the result type (results.pxi),
# the key hash's slot markers and its hash function.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
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


# Large buffers (columns, arena, hash slots) come straight from the kernel: pages are
# resident only once written, growth moves pages instead of copying them, and a freed
# buffer goes back whole, so the malloc heap is neither used nor fragmented by them.
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
    """
    # Resize a page buffer (p NULL: a new one), new bytes zero; NULL when out of memory.
    void* vtpu_pages_resize(void* p, size_t old, size_t n) nogil
    void vtpu_pages_free(void* p, size_t n) nogil


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
