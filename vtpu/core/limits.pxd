# The limits of the coordinate space, defined once for the package. Every unit uses them
# as C constants; being a cpdef enum, each is also an int attribute of vtpu._core, which
# is where the Python modules (coords, protocol, server, ...) take them from.

cpdef enum:
    NDIM = 9                # components per coordinate
    MAX_NUMERIC = 0xEFFF    # largest numeric component
    NAME_BASE = 0xF000      # first name id: ids NAME_BASE..0xFFFF stand for names
    MAX_NAMES = 0x1000      # names one table can hold (0x10000 - NAME_BASE)
    NAME_MAX_LEN = 64       # characters in a name
    KEY_BYTES = 18          # packed coordinate size: 9 x uint16 big-endian
