# The Python-level names of the coordinate space (the numeric limits are in limits.pxd).

COMPONENTS = ("library", "shelf", "series", "collection", "volume", "book",
              "chapter", "section", "scroll")
# Earlier names of MAX_NUMERIC and NAME_BASE, kept for the callers that use them.
MAX_NUMERIC_VALUE = MAX_NUMERIC
NAME_BASE_ID = NAME_BASE
