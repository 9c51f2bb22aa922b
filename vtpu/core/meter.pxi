# ---------------------------------------------------------------------------------------
# Call meters: a client's statistics count and time every point read, and at a
# microsecond per read, two Python clock calls and the float arithmetic between them cost
# a fifth of it. A meter does the counting and the clock reads in C around the call.
# ---------------------------------------------------------------------------------------

cdef extern from *:
    """
    #if defined(_WIN32)
    #include <windows.h>
    static double vtpu_clock(void) {
        static double tick = 0.0;
        LARGE_INTEGER c;
        if (tick == 0.0) {
            LARGE_INTEGER f;
            QueryPerformanceFrequency(&f);
            tick = 1.0 / (double)f.QuadPart;
        }
        QueryPerformanceCounter(&c);
        return (double)c.QuadPart * tick;
    }
    #else
    #include <time.h>
    static double vtpu_clock(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    #endif
    """
    # Seconds on the clock time.perf_counter reads (monotonic; origin unspecified).
    double vtpu_clock() nogil


cdef class CallMeter:
    """Calls one function, counting the calls, the calls that raised and the seconds
    spent in them.

    :param fn: the function (a backend's ``get``, say; its ``put`` for :meth:`write`).
    :param resolve: for :meth:`read`: the key of a coordinate that is neither an 18-byte
        key nor a ``(9,)`` uint16 row (text, a list of ints...), or None when it names
        something that cannot be stored; it raises for a malformed one.
    """
    cdef object fn
    cdef ColumnStore store            # fn is this column store's own get: called in C
    cdef object resolve
    cdef readonly Py_ssize_t calls    # calls that returned
    cdef readonly Py_ssize_t errors   # calls that raised
    cdef readonly double seconds      # time spent in the calls that returned

    def __init__(self, fn, resolve=None):
        self.fn = fn
        self.resolve = resolve
        # An embedded store's reads are the column store's get (the engine binds it):
        # the same method, called through its C entry rather than the interpreter's
        # call protocol (a third of a point read's own cost).
        owner = getattr(fn, "__self__", None)
        self.store = owner if type(owner) is ColumnStore and fn == owner.get else None

    cdef object _timed(self, arg, bint write, content, if_version):
        # fn(arg) (or, to write, fn(arg, content, if_version)), counted and timed: the
        # one body of call(), read() and write().
        cdef double t0 = vtpu_clock()
        try:
            if write:
                r = self.fn(arg, content, if_version)
            elif self.store is not None:
                r = self.store.get(arg)
            else:
                r = self.fn(arg)
        except BaseException:
            self.errors += 1
            raise
        self.seconds += vtpu_clock() - t0
        self.calls += 1
        return r

    cdef inline object _key(self, coord):
        # The key fn is given for a coordinate (read's and write's one conversion): an
        # 18-byte key as it is, a (9,) uint16 row packed, anything else by resolve (None
        # when it names something that cannot be stored).
        if type(coord) is bytes and PyBytes_GET_SIZE(coord) == KEY_BYTES:
            return coord
        key = _key_of(coord)
        if key is None:
            if self.resolve is None:
                raise InterfaceError("this meter converts no coordinates: give "
                                     "an 18-byte key")
            key = self.resolve(coord)
        return key

    # Methods rather than __call__: called with vectorcall, no argument tuple made.
    def call(self, arg):
        """``fn(arg)``, counted and timed.

        :returns: what ``fn`` returns.
        :raises: what ``fn`` raises (counted as an error).
        """
        return self._timed(arg, False, None, None)

    def write(self, coord, content, if_version=None):
        """``fn(key, content, if_version)`` of a coordinate, counted and timed: what
        ``Client.cput`` does, as one C call. The coordinate is converted as :meth:`read`
        converts it (``resolve`` gives the key of any other form, or raises).

        :returns: what ``fn`` returns.
        :raises: what ``resolve`` or ``fn`` raises (only ``fn``'s are counted as errors).
        """
        return self._timed(self._key(coord), True, content, if_version)

    def read(self, coord):
        """``fn(key)`` of a coordinate, counted and timed: what ``Client.cget`` does, as
        one C call. An 18-byte key is passed as it is, a ``(9,)`` uint16 row packed here,
        anything else converted by ``resolve`` (not counted when it raises).

        :returns: what ``fn`` returns, or None (counted, ``fn`` not called) when
            ``resolve`` says the coordinate cannot be stored.
        :raises: what ``resolve`` or ``fn`` raises.
        """
        key = self._key(coord)
        if key is None:
            self.calls += 1
            return None
        return self._timed(key, False, None, None)
