"""Geometry helpers of the chest phantoms: the patient-frame voxel grid, shapes, distances and tube painting."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "Grid",
    "arch_distance",
    "ellipsoid",
    "lut",
    "paint_tubes",
    "rotation",
    "segment_distance",
    "smooth_field",
]


class Grid:
    """Patient-frame coordinates (mm) of a voxel grid, with bounding-box helpers."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], shift: np.ndarray):
        self.shape = shape
        self.spacing = spacing
        self.shift = np.asarray(shift, dtype=float)
        self.axes = [
            ((np.arange(n) - (n - 1) / 2) * s - d).astype(np.float32) for n, s, d in zip(shape, spacing, shift)
        ]
        self.X = self.axes[0][:, None, None]
        self.Y = self.axes[1][None, :, None]
        self.Z = self.axes[2][None, None, :]

    def box(self, lo: Sequence[float], hi: Sequence[float]):
        """Index slices and broadcastable coordinates of the voxels inside ``[lo, hi]``; None if empty."""
        slices = []
        for axis, low, high in zip(self.axes, lo, hi):
            i0, i1 = np.searchsorted(axis, low, "left"), np.searchsorted(axis, high, "right")
            if i1 <= i0:
                return None
            slices.append(slice(int(i0), int(i1)))
        sx, sy, sz = slices
        x, y, z = self.axes[0][sx], self.axes[1][sy], self.axes[2][sz]
        return tuple(slices), x[:, None, None], y[None, :, None], z[None, None, :]

    def coords(self, flat_index: np.ndarray) -> np.ndarray:
        """``(N, 3)`` patient coordinates of flat voxel indices."""
        ijk = np.unravel_index(flat_index, self.shape)
        return np.stack([axis[i] for axis, i in zip(self.axes, ijk)], axis=1)

    def index(self, points: np.ndarray) -> np.ndarray:
        """Nearest voxel indices ``(N, 3)`` of patient coordinates ``(N, 3)`` (may fall outside the grid)."""
        spacing, shape = np.array(self.spacing), np.array(self.shape)
        return np.rint((np.asarray(points) + self.shift) / spacing + (shape - 1) / 2).astype(np.int64)


def lut(codes: Sequence[int]) -> np.ndarray:
    """Boolean look-up table over uint8 tissue codes."""
    table = np.zeros(256, dtype=bool)
    table[list(codes)] = True
    return table


def ellipsoid(grid: Grid, center: Sequence[float], radii: Sequence[float], rot: np.ndarray | None = None):
    """``(slices, inside)`` of a (rotated) ellipsoid or None; ``rot`` columns are the local axes in patient frame."""
    reach = max(radii) if rot is not None else None
    lo = [c - (reach or r) for c, r in zip(center, radii)]
    hi = [c + (reach or r) for c, r in zip(center, radii)]
    found = grid.box(lo, hi)
    if found is None:
        return None
    slices, X, Y, Z = found
    d = (X - center[0], Y - center[1], Z - center[2])
    if rot is None:
        q = d
    else:
        q = tuple(rot[0, i] * d[0] + rot[1, i] * d[1] + rot[2, i] * d[2] for i in range(3))
    return slices, (q[0] / radii[0]) ** 2 + (q[1] / radii[1]) ** 2 + (q[2] / radii[2]) ** 2 < 1.0


def segment_distance(X: np.ndarray, Y: np.ndarray, Z: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from broadcastable coordinates to the segment ``a-b`` (mm)."""
    ab = b - a
    t = ((X - a[0]) * ab[0] + (Y - a[1]) * ab[1] + (Z - a[2]) * ab[2]) / max(float(ab @ ab), 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2 + (Z - a[2] - t * ab[2]) ** 2)


def arch_distance(X: np.ndarray, Y: np.ndarray, Z: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance to the upper half circle standing on the horizontal chord ``start-end`` (the aortic arch)."""
    center = (start + end) / 2
    radius = float(np.linalg.norm(end - start)) / 2
    u = (end - start) / (2 * radius)
    dx, dy, dz = X - center[0], Y - center[1], Z - center[2]
    along = dx * u[0] + dy * u[1]
    normal = dx * -u[1] + dy * u[0]
    dist = np.sqrt((np.sqrt(along**2 + dz**2) - radius) ** 2 + normal**2)
    return np.where(dz >= 0, dist, np.inf)


def rotation(yaw: float, tilt: float) -> np.ndarray:
    """Rotation about Z by ``yaw`` then about the new Y by ``tilt`` (radians); columns are local axes."""
    cz, sz, cy, sy = np.cos(yaw), np.sin(yaw), np.cos(tilt), np.sin(tilt)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ ry


def paint_tubes(
    tissue: np.ndarray,
    grid: Grid,
    segments: Sequence[tuple[np.ndarray, np.ndarray, float]],
    code: int,
    where: np.ndarray,
) -> np.ndarray:
    """Paint many thin tubes ``(start, end, radius)`` at once: centreline points dilated by a per-radius stencil.

    Only voxels whose current code is allowed by the look-up table ``where`` change. Returns the painted flat indices.
    """
    if not segments:
        return np.zeros(0, dtype=np.int64)
    spacing, shape = np.array(grid.spacing), np.array(grid.shape)
    starts = np.array([a for a, _, _ in segments], dtype=float)
    steps = np.array([b for _, b, _ in segments], dtype=float) - starts
    radii = np.round(np.array([r for _, _, r in segments], dtype=float), 1)
    counts = np.ceil(np.linalg.norm(steps, axis=1) / (0.5 * spacing.min())).astype(int) + 1
    owner = np.repeat(np.arange(len(segments)), counts)
    t = (np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)) / np.repeat(
        np.maximum(counts - 1, 1), counts
    )
    centres = grid.index(starts[owner] + t[:, None] * steps[owner])
    painted = []
    for radius in np.unique(radii):
        reach = np.floor(radius / spacing).astype(int)
        offsets = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
        offsets = offsets[((offsets * spacing) ** 2).sum(1) <= radius**2 + 1e-6]
        voxels = (centres[radii[owner] == radius][:, None, :] + offsets[None]).reshape(-1, 3)
        voxels = voxels[np.all((voxels >= 0) & (voxels < shape), axis=1)]
        flat = np.unique(np.ravel_multi_index(voxels.T, tissue.shape))
        flat = flat[where[tissue.ravel()[flat]]]
        np.put(tissue, flat, code)
        painted.append(flat)
    return np.concatenate(painted)


def smooth_field(shape: tuple[int, ...], spacing: Sequence[float], scale_mm: float, rng: np.random.Generator):
    """Zero-mean, unit-variance Gaussian random field with correlation length ``scale_mm`` (float32)."""
    from scipy.ndimage import gaussian_filter

    field = rng.standard_normal(shape, dtype=np.float32)
    field = gaussian_filter(field, [scale_mm / s for s in spacing], mode="wrap")
    return (field - field.mean()) / max(float(field.std()), 1e-6)
