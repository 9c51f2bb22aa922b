# Morton (Z-order): the 128-bit integer holding the two 72-bit halves of a Z key.

cdef extern from *:
    """
    typedef unsigned __int128 vtpu_u128;
    """
    ctypedef unsigned long long u128 "vtpu_u128"
