"""Hypothesis strategies shared by the property tests (imported as the other helper
modules are: ``sys.path.insert(0, <tests>)`` then ``from _strategies import ...``)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


@st.composite
def small_patterns(draw, small, any_weight: int = 2):
    """A (2, 9) uint16 pattern over the values of ``small``: each component any value
    (``any_weight`` times as likely as the others), one value, or a range of them."""
    lo, hi = [], []
    for _ in range(9):
        kind = draw(st.sampled_from(["any"] * any_weight + ["eq", "range"]))
        if kind == "any":
            a, b = 0, 0xFFFF
        elif kind == "eq":
            a = b = draw(small)
        else:
            a = draw(small)
            b = draw(st.integers(a, 4))
        lo.append(a), hi.append(b)
    return np.array([lo, hi], dtype=np.uint16)
