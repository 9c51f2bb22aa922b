# Parsing: the token kinds, modes and error codes of the tokenizer in parse.pxi.
from libc.stdint cimport int64_t

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

cdef enum TokKind:
    TK_NUM = 0
    TK_STAR = 1
    TK_RANGE = 2
    TK_NAME = 3
    TK_SETNUM = 4
    TK_SETNAME = 5
    TK_ADD = 6

cdef enum ParseMode:
    M_COORD = 0
    M_PATTERN = 1
    M_DELTA = 2

cdef enum ParseErr:
    E_OK = 0
    E_EMPTY = 1
    E_CHAR = 2
    E_RANGE = 3
    E_FEW = 4
    E_MANY = 5
    E_NAMELEN = 6
    E_INTERVAL = 7
    E_SEP = 8
    E_EMPTYIV = 9

cdef struct Tok:
    int kind
    int64_t a
    int64_t b
