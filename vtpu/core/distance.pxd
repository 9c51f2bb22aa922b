# Distances: the block size of the flat L1/Hamming passes in distance.pxi.

cdef enum:
    DIST_BLOCK = 512   # rows per distance block: the uint16 scratch (2 x 9 KB) stays in L1
    NEAREST_LEAF = 64  # a sorted range this short is scanned rather than split

