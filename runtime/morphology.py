"""The image morphology the post-processing needs, on numpy alone (8-connectivity throughout).

The lean runtime (`pip install histosmith`, docs/install.md) carries no scipy, scikit-image or OpenCV, so the
four operations of the watershed live here, each written as a fixed-point iteration of whole-array steps (one
3x3 neighbourhood per step), which numpy runs at array speed:

* :func:`reconstruct_by_dilation`: grayscale reconstruction, the geodesic dilation repeated until stable;
* :func:`label`: connected components numbered in raster order of their first pixel (as ``scipy.ndimage.label``
  numbers them): every pixel takes the smallest index in its neighbourhood, then the index its index holds
  (pointer jumping), until stable;
* :func:`find_objects`: the bounding box of every label;
* :func:`watershed`: marker-controlled flooding of an altitude map inside a mask. A pixel takes the marker it
  can be reached from with the lowest pass (the highest altitude along the path, minimised); at equal passes the
  one that arrives first (in fewer steps along that pass, then risen from a lower pass), then the lowest marker
  id. That is the flooding order of a priority-flood watershed (lower altitude first, first come first served)
  computed as a shortest-path problem (Bellman-Ford on a lexicographic key), so it needs no queue.
"""

from __future__ import annotations

import numpy as np


class _Padded:
    """A (H+2, W+2) buffer whose border holds ``fill``: the 3x3 filters read an image through it without
    allocating a padded copy at every step."""

    def __init__(self, shape: tuple[int, ...], dtype, fill) -> None:
        self.buf = np.full((shape[0] + 2, shape[1] + 2), fill, dtype=dtype)
        self.inner = self.buf[1:-1, 1:-1]
        self.rows = np.empty((shape[0], shape[1] + 2), dtype=dtype)
        self.out = np.empty(shape, dtype=dtype)

    def filter3(self, a: np.ndarray, op: np.ufunc) -> np.ndarray:
        """3x3 ``op`` (np.maximum or np.minimum) of ``a``, separable; the result is reused by the next call."""
        b, rows, out = self.buf, self.rows, self.out
        self.inner[...] = a
        op(b[:-2], b[1:-1], out=rows)
        op(rows, b[2:], out=rows)
        op(rows[:, :-2], rows[:, 1:-1], out=out)
        op(out, rows[:, 2:], out=out)
        return out

    def windows(self, a: np.ndarray) -> np.ndarray:
        """(H, W, 9) view of every pixel's 3x3 neighbourhood of ``a`` (valid until the next call)."""
        self.inner[...] = a
        return np.lib.stride_tricks.sliding_window_view(self.buf, (3, 3)).reshape(*a.shape, 9)


def reconstruct_by_dilation(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grayscale reconstruction by dilation of ``seed`` under ``mask`` (2-D float arrays of one shape): the
    largest image below ``mask`` whose every regional maximum holds a value of ``seed``. Only max and min:
    the result is exact, bit for bit."""
    mask = np.asarray(mask)
    rec = np.minimum(seed, mask)
    if not rec.size:
        return rec
    pad = _Padded(rec.shape, rec.dtype, rec.min())
    while True:
        grown = np.minimum(pad.filter3(rec, np.maximum), mask)
        if np.array_equal(grown, rec):
            return rec
        rec = grown


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a 2-D boolean mask -> (int32 labels 1..n in raster order of each component's
    first pixel, 0 outside; n)."""
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, dtype=np.int32)
    if not mask.any():
        return out, 0
    none = mask.size  # the index of "no pixel": one past the last
    flat_mask = mask.ravel()
    index = np.where(flat_mask, np.arange(mask.size), none)
    lookup = np.append(index, none)  # lookup[i] = the index pixel i holds (none stays none)
    pad = _Padded(mask.shape, index.dtype, none)
    while True:
        smallest = np.where(flat_mask, pad.filter3(lookup[:-1].reshape(mask.shape), np.minimum).ravel(), none)
        jumped = lookup[smallest]  # pointer jumping: take over what the smallest neighbour already found
        if np.array_equal(jumped, lookup[:-1]):
            break
        lookup[:-1] = jumped
    roots, ids = np.unique(lookup[:-1][flat_mask], return_inverse=True)  # roots ascending = raster order
    out.ravel()[flat_mask] = ids.astype(np.int32) + 1
    return out, len(roots)


def find_objects(labels: np.ndarray) -> list[tuple[slice, slice] | None]:
    """The bounding box (two slices) of every label 1..max of a 2-D label image; None for an absent label."""
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs].astype(np.int64) - 1
    big = np.iinfo(np.int64).max
    lo_y, lo_x = np.full(n, big), np.full(n, big)
    hi_y, hi_x = np.full(n, -1), np.full(n, -1)
    np.minimum.at(lo_y, ids, ys)
    np.minimum.at(lo_x, ids, xs)
    np.maximum.at(hi_y, ids, ys)
    np.maximum.at(hi_x, ids, xs)
    return [(slice(int(lo_y[i]), int(hi_y[i]) + 1), slice(int(lo_x[i]), int(hi_x[i]) + 1)) if hi_y[i] >= 0
            else None for i in range(n)]


def watershed(altitude: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Flood ``altitude`` (2-D float) from ``markers`` (int, 0 = none) inside ``mask`` (bool) -> int32 labels;
    mask pixels no marker reaches stay 0. See the module docstring for the order.

    A connected part of the mask that holds one marker id is that marker's whole basin; only the parts that
    two or more markers share are flooded, each in its own bounding box."""
    markers = np.asarray(markers)
    seeded = markers > 0
    mask = np.asarray(mask, dtype=bool) | seeded
    out = np.zeros(markers.shape, dtype=np.int32)
    if not seeded.any():
        return out
    parts, n_parts = label(mask)
    pairs = np.unique(np.stack([parts[seeded], markers[seeded].astype(np.int64)]), axis=1)  # (part, id) pairs
    ids_in_part = np.bincount(pairs[0], minlength=n_parts + 1)
    sole = np.zeros(n_parts + 1, dtype=np.int32)
    single = ids_in_part[pairs[0]] == 1
    sole[pairs[0][single]] = pairs[1][single]
    out[:] = sole[parts]  # parts with one id (and parts with none: 0)
    for part in np.flatnonzero(ids_in_part > 1):
        ys, xs = np.nonzero(parts == part)
        box = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
        own = parts[box] == part
        flooded = _flood(altitude[box], np.where(own, markers[box], 0), own)
        out[box][own] = flooded[own]
    return out


def _flood(altitude: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The shortest-path flooding of :func:`watershed` on one connected mask.

    A priority flood pops pixels in order of (pass, arrival) and a pixel joins the neighbour popped first. The
    key below is that order: the pass (an altitude rank), then the steps taken along that pass since the flood
    rose to it, then the pass it rose from, then the marker id; packed into one int64 so that one minimum
    compares them all."""
    rank = np.zeros(markers.shape, dtype=np.int64)
    values, inverse = np.unique(altitude[mask], return_inverse=True)
    rank[mask] = inverse.ravel()
    n_ranks, n_ids = len(values), int(markers.max()) + 1
    step = n_ranks * n_ids
    per_pass = (int(mask.sum()) + 1) * step  # steps never exceed the pixel count
    if per_pass * n_ranks >= 2 ** 62:
        raise ValueError(f"watershed: a connected region of {int(mask.sum())} pixels is too large to flood")
    floor = rank * per_pass  # the smallest key a pixel can hold: reached at its own altitude
    unreached = 2 ** 62  # + step still fits in int64
    key = np.where(markers > 0, floor + markers, unreached)
    free = mask & (markers <= 0)
    floor = floor[..., None]
    pad = _Padded(key.shape, key.dtype, unreached)
    while True:
        around = pad.windows(key)
        # through a neighbour whose pass is at or above this pixel's altitude: that pass, one step further; through
        # one of a lower pass: the pass rises to this pixel's altitude, 0 steps, risen from the neighbour's pass
        # (the centre offers itself one step further: no gain)
        rise = floor + around // per_pass * n_ids + around % n_ids
        candidate = np.where(around >= floor, around + step, rise).min(axis=-1)
        best = np.where(free, np.minimum(candidate, key), key)
        if np.array_equal(best, key):
            break
        key = best
    return np.where(key < unreached, key % n_ids, 0).astype(np.int32)
