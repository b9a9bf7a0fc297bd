"""The rows of a global minibatch that one rank (or replica) trains on.

Masks are drawn for the global batch, so every rank draws the same numbers from
the run's seed as one process would; each then keeps its rows. Every mask array
has the batch as its first axis.
"""

from ..masks import Masks


def _rows(a, rows):
    return None if a is None else a[rows]


def shard_masks(masks, rows):
    """``masks`` (a ``Masks`` of the global batch) restricted to ``rows`` (a slice)."""
    many = lambda seq: None if seq is None else tuple(_rows(a, rows) for a in seq)
    return Masks(_rows(masks.x, rows), many(masks.i), many(masks.h), _rows(masks.o, rows))
