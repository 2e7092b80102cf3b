"""From generated maps to labels: watershed on the distance map inside the class foreground.

docs/model.md: foreground = class argmax != 0; markers = the h-maxima of the distance map (it peaks at 1
in the centre of every nucleus and falls to about 1/radius at its border, so two touching nuclei are
two maxima separated by a deep valley, while the shallow secondary maxima of one irregular nucleus are
merged); watershed on −distance within the foreground; fragments below ``min_area`` dropped; one class per
instance by majority vote. The marker depth h may differ per class (``--marker-depth 0.25,neoplastic=0.1``):
each pixel's dome is shaved by the depth of its class. Optionally a nucleus larger than an area limit of its
class (``--marker-depth 0.25,neoplastic>360``; the real 99th percentile is a natural one) is seeded again at a
shallower depth and split where its own distance map holds more than one dome: an implausibly large nucleus is
more often two touching nuclei joined by a shallow valley than one. Numpy alone (runtime/morphology.py), no
torch: every backend and the lean install share it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from histosmith.data.labels import instance_classes, relabel_sequential
from histosmith.errors import HistoSmithError
from histosmith.runtime.morphology import find_objects, label, reconstruct_by_dilation, watershed

# The flooding of runtime/morphology.py; runs labelled before it (scikit-image's watershed) recorded none.
WATERSHED = "numpy-flood"


@dataclass(frozen=True)
class PostprocessConfig:
    h: float = 0.4  # a maximum must rise this much above the saddle to its neighbour to seed a nucleus
    min_area: int = 3  # instances smaller than this many pixels are dropped
    # One marker depth per class id 1..K, used on that class's pixels instead of ``h`` (empty: ``h`` everywhere).
    class_h: tuple[float, ...] = ()
    # One area limit (pixels) per class id 1..K, 0 for none: a nucleus larger than its class's limit is seeded again
    # at the shallower depth ``split_h`` and split where that finds more than one marker (empty: off).
    split_area: tuple[float, ...] = ()
    split_h: float = 0.1

    def depth(self, classes: np.ndarray, n_classes: int) -> float | np.ndarray:
        """The marker depth at every pixel of a class-id map (one number when it is the same everywhere)."""
        if not self.class_h:
            return self.h
        if len(self.class_h) != n_classes:
            raise ValueError(f"class_h holds {len(self.class_h)} marker depths for {n_classes} classes")
        return np.asarray((self.h, *self.class_h), dtype=np.float32)[classes]

    def record(self) -> dict[str, Any]:
        """As written to generation.json (``class_h`` and the split only when set, so earlier runs read as
        before), with the watershed that drew the labels: a run labelled by another one is not resumed."""
        out = asdict(self) | {"class_h": list(self.class_h), "split_area": list(self.split_area),  # as JSON reads
                              "watershed": WATERSHED}
        if not self.class_h:  # it back, for the resume check
            del out["class_h"]
        if not self.split_area:
            del out["split_area"], out["split_h"]
        return out


@dataclass(frozen=True)
class MarkerDepth:
    """``--marker-depth``: one h for every class, or per class name, e.g. ``0.25,neoplastic=0.1`` (a class
    not named takes the plain number; 0.4 when there is none); optionally with area limits that split oversized
    nuclei, e.g. ``0.25,neoplastic>360,split=0.1``: a nucleus of that class larger than 360 pixels is seeded again
    at depth 0.1 (:func:`split_oversized`; ``split`` 0.1 when not given; a class whose own depth is no deeper
    finds nothing more to split). Resolved against a model's classes by
    :meth:`config`."""

    default: float = PostprocessConfig.h
    per_class: tuple[tuple[str, float], ...] = ()
    split_above: tuple[tuple[str, float], ...] = ()  # (class name, pixels)
    split_h: float = PostprocessConfig.split_h

    @classmethod
    def parse(cls, text: str) -> MarkerDepth:
        default, named, limits, split_h = None, {}, {}, None
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            if ">" in part:
                name, _, value = (x.strip() for x in part.partition(">"))
                if not name or name in limits:
                    raise HistoSmithError(f"--marker-depth {part!r}: expected class>pixels, each class once")
                limits[name] = _area_value(value, part)
                continue
            name, sep, value = (x.strip() for x in part.rpartition("="))
            h = _depth_value(value, part)
            if not sep:
                if default is not None:
                    raise HistoSmithError(f"--marker-depth {text!r}: more than one depth for every class")
                default = h
            elif name == "split":
                if split_h is not None:
                    raise HistoSmithError(f"--marker-depth {text!r}: more than one split depth")
                split_h = h
            elif not name or name in named:
                raise HistoSmithError(f"--marker-depth {part!r}: expected class=h, each class once")
            else:
                named[name] = h
        if default is None and not named:
            raise HistoSmithError("--marker-depth: no depth given")
        if split_h is not None and not limits:
            raise HistoSmithError(f"--marker-depth {text!r}: split={split_h:g} needs the area limits it applies "
                                  "to (class>pixels)")
        return cls(PostprocessConfig.h if default is None else default, tuple(named.items()), tuple(limits.items()),
                   PostprocessConfig.split_h if split_h is None else split_h)

    def config(self, class_names: Sequence[str], min_area: int = PostprocessConfig.min_area) -> PostprocessConfig:
        """The post-processing for a model with these classes; a class name it does not have is refused."""
        named, limits = dict(self.per_class), dict(self.split_above)
        unknown = [n for n in (*named, *limits) if n not in class_names]
        if unknown:
            raise HistoSmithError(f"--marker-depth: unknown class {unknown[0]!r}; the model's classes are "
                                  f"{', '.join(class_names)}")
        class_h = tuple(named.get(n, self.default) for n in class_names)
        uniform = all(h == self.default for h in class_h)  # one depth everywhere: the plain config
        return PostprocessConfig(h=self.default, min_area=min_area, class_h=() if uniform else class_h,
                                 split_area=tuple(limits.get(n, 0.0) for n in class_names) if limits else (),
                                 split_h=self.split_h)

    @classmethod
    def of(cls, post: PostprocessConfig, class_names: Sequence[str]) -> MarkerDepth:
        """The ``--marker-depth`` that resolves to ``post`` for a model with these classes."""
        depths = zip(class_names, post.class_h or (post.h,) * len(class_names), strict=True)
        limits = zip(class_names, post.split_area, strict=True) if post.split_area else ()
        return cls(post.h, tuple((n, h) for n, h in depths if h != post.h), tuple((n, a) for n, a in limits if a > 0),
                   post.split_h)

    def __str__(self) -> str:
        split = [f"{n}>{a:g}" for n, a in self.split_above] + ([f"split={self.split_h:g}"] if self.split_above else [])
        return ",".join([f"{self.default:g}", *(f"{n}={h:g}" for n, h in self.per_class), *split])


def float_or_nan(text: str) -> float:
    """``text`` as a number; nan when it is none (so that one range check refuses both)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _depth_value(text: str, part: str) -> float:
    h = float_or_nan(text)
    if not 0 < h <= 1:
        raise HistoSmithError(f"--marker-depth {part!r}: a depth is a number in (0, 1]")
    return h


def _area_value(text: str, part: str) -> float:
    area = float_or_nan(text)
    if not (math.isfinite(area) and area > 0):
        raise HistoSmithError(f"--marker-depth {part!r}: an area limit is a number of pixels above 0")
    return area


def marker_depth_label(post: PostprocessConfig, class_names: Sequence[str]) -> float | str:
    """The marker depth as reports record it: the number, or the ``--marker-depth`` text when it differs per
    class or splits oversized nuclei."""
    if not post.class_h and not post.split_area:
        return post.h
    return str(MarkerDepth.of(post, class_names))


def h_maxima_markers(distance: np.ndarray, h: float | np.ndarray, eps: float = 1e-3) -> tuple[np.ndarray, int]:
    """Label the regional maxima of ``distance`` (zero outside nuclei) whose dynamic is at least ``h``.

    ``rec = R_f(f - h)`` shaves every dome of ``f`` by ``h``; the regional maxima of ``rec`` (pixels
    that ``R_rec(rec - eps)`` cannot reach) are the extended h-maxima: one connected marker per dome,
    however many equal peaks the dome has. ``h`` may be a map (one depth per pixel).
    """
    f = distance.astype(np.float32)
    rec = reconstruct_by_dilation(f - h, f)
    top = rec - reconstruct_by_dilation(rec - eps, rec) >= eps / 2
    return label(top & (f > 0))


def labels_from_maps(distance: np.ndarray, classes: np.ndarray, n_classes: int,
                     cfg: PostprocessConfig = PostprocessConfig()) -> np.ndarray:
    """Distance map (H, W) in [0, 1] and class ids (H, W) -> int32 (H, W, 2) instance + class labels."""
    foreground = classes != 0
    out = np.zeros((*classes.shape, 2), dtype=np.int32)
    if not foreground.any():
        return out
    masked = np.where(foreground, distance, 0).astype(np.float32)
    markers, n_markers = h_maxima_markers(masked, cfg.depth(classes, n_classes))
    # A foreground blob without a core still is a nucleus: it gets its own marker (its whole area).
    blobs, n_blobs = label(foreground)
    has_marker = np.zeros(n_blobs + 1, dtype=bool)
    has_marker[np.unique(blobs[markers > 0])] = True
    orphan = ~has_marker[blobs] & foreground
    if orphan.any():
        extra, _ = label(orphan)
        markers[orphan] = extra[orphan] + n_markers
    # Flood −distance from the markers, restricted to the foreground.
    inst = watershed(-distance.astype(np.float32), markers, foreground)
    if cfg.split_area:
        inst = split_oversized(inst, masked, classes, n_classes, cfg)
    if cfg.min_area > 1:
        areas = np.bincount(inst.ravel())
        inst[(areas < cfg.min_area)[inst] & (inst > 0)] = 0
    inst = relabel_sequential(inst)
    votes = instance_classes(inst, classes, n_classes)
    out[..., 0] = inst
    out[..., 1] = votes[inst]
    return out


def split_oversized(inst: np.ndarray, distance: np.ndarray, classes: np.ndarray, n_classes: int,
                    cfg: PostprocessConfig) -> np.ndarray:
    """Seed every instance larger than its class's ``split_area`` again at the shallower ``split_h`` (its own
    distance map only) and flood it from those markers: two nuclei joined by a valley shallower than the
    class's depth come apart, one nucleus with a single dome stays whole. Instance ids stay unique, not
    sequential."""
    if len(cfg.split_area) != n_classes:
        raise ValueError(f"split_area holds {len(cfg.split_area)} limits for {n_classes} classes")
    votes = instance_classes(inst, classes, n_classes)
    limit = np.asarray([np.inf] + [a if a > 0 else np.inf for a in cfg.split_area], dtype=np.float64)[votes]
    big = np.flatnonzero(np.bincount(inst.ravel(), minlength=len(votes)) > limit)  # background: class 0, no limit
    if not len(big):
        return inst
    out, next_id = inst.copy(), int(inst.max()) + 1
    boxes = find_objects(inst)
    for i in big.tolist():
        box = boxes[i - 1]
        own = inst[box] == i
        dome = np.where(own, distance[box], 0).astype(np.float32)
        seeds, n_seeds = h_maxima_markers(dome, cfg.split_h)
        if n_seeds < 2:
            continue
        parts = watershed(-dome, seeds, own)
        piece = out[box]
        piece[own] = np.where(parts[own] > 0, parts[own] - 1 + next_id, i)
        next_id += n_seeds
    return out
