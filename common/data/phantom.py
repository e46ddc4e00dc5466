"""Deterministic chest-CT phantoms with reports, labels and lesion masks: the embedded default dataset.

Each phantom is an analytic chest drawn on an anisotropic voxel grid (in-plane 2.5-3.5 mm, slices 4-6 mm,
about 390 x 390 x 305 mm, patient size and position varying per case) and stored as a RAS-oriented int16 HU
NIfTI. Anatomy: air, body with subcutaneous fat, chest-wall muscle, twelve pairs of ribs, sternum, vertebrae
with discs and spinal canal, two lungs with a dependent density gradient and a branching vessel tree,
mediastinal fat, heart, aorta (ascending, arch, descending; non-contrast blood ~40 HU), trachea and main
bronchi, oesophagus, and a domed diaphragm with liver and upper abdomen below it. Intensities get a light
partial-volume blur and Gaussian noise (8-14 HU). The six findings of :mod:`common.data.findings` are drawn
independently (probability :data:`FINDING_PROBABILITY` each) and sized to be visible at 6 mm: a 12-30 mm
solid nodule in a named lobe, a dependent pleural effusion (left/right/bilateral), cardiomegaly (heart scaled
1.3-1.5x), upper-zone emphysema (~-950 HU) with bullae, a lobar consolidation (>= 25 ml, 10-50 HU) and
calcified plaques (900-1400 HU) on the aortic wall.

The radiograph-like view of the same phantom is a digitally reconstructed radiograph (DRR): attenuation
integrated along the antero-posterior axis, log-domain windowed and shown as a PA film (patient's right on the
viewer's left, bones bright) on square pixels.

Deliberate simplifications (documented deviations from real data): nodules are at least 12 mm (two voxels at
6 mm) so the positive class is learnable at the bundles' default 6 mm grid; lobes are split by planar
fissures; consolidation has no air bronchogram; there is no contrast, motion, streak or beam-hardening
artefact, and no arms or scapulae.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data.findings import FINDINGS

__all__ = [
    "GENERATOR_VERSION",
    "FINDING_PROBABILITY",
    "LOBES",
    "SIDES",
    "TISSUES",
    "KEYS_TO_CLASS",
    "Phantom",
    "make_phantom",
    "write_report",
    "project_radiograph",
    "generate_dataset",
]

GENERATOR_VERSION = "phantoms-v1"
FINDING_PROBABILITY = 0.4
LOBES: tuple[str, ...] = (
    "right upper lobe",
    "right middle lobe",
    "right lower lobe",
    "left upper lobe",
    "left lower lobe",
)
SIDES: tuple[str, ...] = ("left", "right", "bilateral")
NODULE_DIAMETER_MM = (12.0, 30.0)
CARDIOMEGALY_SCALE = (1.3, 1.5)

# Tissue classes of the phantom (codes of :attr:`Phantom.tissue`) and their nominal HU.
TISSUES: dict[str, int] = {
    "air": 0,
    "subcutaneous_fat": 1,
    "muscle": 2,
    "mediastinal_fat": 3,
    "liver": 4,
    "abdomen": 5,
    "lung": 6,
    "emphysema": 7,
    "bulla": 8,
    "vessel": 9,
    "heart": 10,
    "aorta": 11,
    "calcification": 12,
    "airway": 13,
    "airway_wall": 14,
    "oesophagus": 15,
    "vertebral_body": 16,
    "cortical_bone": 17,
    "rib": 18,
    "sternum": 19,
    "spinal_canal": 20,
    "effusion": 21,
    "consolidation": 22,
    "nodule": 23,
    "disc": 24,
}
_HU = {
    "air": -1000, "subcutaneous_fat": -100, "muscle": 45, "mediastinal_fat": -85, "liver": 58, "abdomen": 35,
    "lung": -850, "emphysema": -950, "bulla": -990, "vessel": 40, "heart": 40, "aorta": 42, "calcification": 950,
    "airway": -1000, "airway_wall": 30, "oesophagus": 35, "vertebral_body": 400, "cortical_bone": 950, "rib": 650,
    "sternum": 450, "spinal_canal": 25, "effusion": 12, "consolidation": 30, "nodule": 45, "disc": 85,
}  # fmt: skip
_T = TISSUES
_PARENCHYMA = (_T["lung"], _T["emphysema"], _T["bulla"], _T["vessel"])
KEYS_TO_CLASS: dict[str, int] = {f.key: i + 1 for i, f in enumerate(FINDINGS)}  # lesion mask class of each finding
_MASK_OF_TISSUE = {
    _T["nodule"]: KEYS_TO_CLASS["lung_nodule"], _T["effusion"]: KEYS_TO_CLASS["pleural_effusion"],
    _T["emphysema"]: KEYS_TO_CLASS["emphysema"], _T["bulla"]: KEYS_TO_CLASS["emphysema"],
    _T["consolidation"]: KEYS_TO_CLASS["consolidation"],
    _T["calcification"]: KEYS_TO_CLASS["arterial_wall_calcification"],
}  # fmt: skip
_SPLITS = {"training": 0, "image_only": 1, "validation": 2, "test": 3}
_CASE_PREFIX = {"training": "train", "image_only": "unpaired", "validation": "val", "test": "test"}

_NORMAL_SENTENCES: tuple[str, ...] = (
    "Trachea and main bronchi are patent.",
    "The central airways are patent.",
    "No mediastinal or hilar lymphadenopathy.",
    "There is no pathologically enlarged lymph node in the mediastinum.",
    "The thoracic aorta is normal in calibre.",
    "The oesophagus is unremarkable.",
    "The visualised upper abdominal organs are unremarkable.",
    "No acute osseous abnormality.",
    "The bony structures of the thorax are intact.",
    "The chest wall soft tissues are unremarkable.",
    "No pneumothorax.",
    "No pericardial effusion.",
)
_IMPRESSION: dict[str, tuple[str, ...]] = {
    "lung_nodule": ("{size} mm nodule in the {lobe}.", "Pulmonary nodule in the {lobe} measuring {size} mm."),
    "pleural_effusion": ("{Side} pleural effusion.", "Pleural effusion, {side}."),
    "cardiomegaly": ("Cardiomegaly.", "Enlarged heart."),
    "emphysema": ("Emphysema.", "Centrilobular emphysema."),
    "consolidation": ("Consolidation in the {lobe}.", "{Lobe} consolidation."),
    "arterial_wall_calcification": ("Aortic atherosclerotic calcification.", "Calcified plaques of the aorta."),
}
_NO_FINDINGS_IMPRESSION = "No acute cardiopulmonary abnormality."


@dataclass
class Phantom:
    """One phantom case.

    Attributes:
        case_id: identifier, e.g. ``train_00012``.
        hu: ``(X, Y, Z)`` int16 Hounsfield units, axes ordered R, A, S (patient left to right is +X).
        mask: ``(X, Y, Z)`` uint8 lesion label map, class ``i + 1`` for ``FINDINGS[i]``, 0 background.
        tissue: ``(X, Y, Z)`` uint8 tissue classes, codes in :data:`TISSUES`.
        affine: ``(4, 4)`` voxel-to-RAS world affine in mm.
        labels: ``{finding_key: 0 | 1}`` for every finding of the vocabulary.
        details: per present finding, what the report states (``lobe``, ``side``, ``size``) plus extras.
        report: free-text report (``FINDINGS: ... IMPRESSION: ...``).
        geometry: a few anatomical landmarks (mm, patient frame) and the patient's shift within the field of view.
    """

    case_id: str
    hu: np.ndarray
    mask: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    labels: dict[str, int]
    details: dict[str, dict[str, Any]]
    report: str
    geometry: dict[str, float] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along X, Y, Z."""
        return tuple(float(v) for v in np.abs(np.diag(self.affine)[:3]))  # type: ignore[return-value]

    def patient_axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates (mm) along X, Y, Z in the patient frame (origin mid-chest, RAS directions)."""
        shift = (self.geometry["shift_x"], self.geometry["shift_y"], self.geometry["shift_z"])
        return tuple(  # type: ignore[return-value]
            (np.arange(n) - (n - 1) / 2) * s - d for n, s, d in zip(self.hu.shape, self.spacing, shift)
        )


class _Grid:
    """Patient-frame coordinates (mm) of a voxel grid, with bounding-box helpers."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], shift: np.ndarray):
        self.shape = shape
        self.spacing = spacing
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


def _lut(codes: Sequence[int]) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(codes)] = True
    return table


_IS_PARENCHYMA = _lut(_PARENCHYMA)
_IS_SOFT = _lut(
    [_T[k] for k in ("mediastinal_fat", "muscle", "subcutaneous_fat", "lung", "emphysema", "vessel", "heart", "aorta")]
)  # tissues that halos and plaques may overwrite (never bone or airway)


def _ellipsoid(grid: _Grid, center: Sequence[float], radii: Sequence[float], rotation: np.ndarray | None = None):
    """``(slices, inside)`` of a (rotated) ellipsoid; ``rotation`` columns are the local axes in patient frame."""
    reach = max(radii) if rotation is not None else None
    lo = [c - (reach or r) for c, r in zip(center, radii)]
    hi = [c + (reach or r) for c, r in zip(center, radii)]
    found = grid.box(lo, hi)
    if found is None:
        return None
    slices, X, Y, Z = found
    d = (X - center[0], Y - center[1], Z - center[2])
    if rotation is None:
        q = d
    else:
        q = tuple(rotation[0, i] * d[0] + rotation[1, i] * d[1] + rotation[2, i] * d[2] for i in range(3))
    return slices, (q[0] / radii[0]) ** 2 + (q[1] / radii[1]) ** 2 + (q[2] / radii[2]) ** 2 < 1.0


def _segment_distance(X: np.ndarray, Y: np.ndarray, Z: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from broadcastable coordinates to the segment ``a-b`` (mm)."""
    ab = b - a
    t = ((X - a[0]) * ab[0] + (Y - a[1]) * ab[1] + (Z - a[2]) * ab[2]) / max(float(ab @ ab), 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2 + (Z - a[2] - t * ab[2]) ** 2)


def _arch_distance(X: np.ndarray, Y: np.ndarray, Z: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance to the upper half circle standing on the horizontal chord ``start-end`` (the aortic arch)."""
    center = (start + end) / 2
    radius = float(np.linalg.norm(end - start)) / 2
    u = (end - start) / (2 * radius)
    dx, dy, dz = X - center[0], Y - center[1], Z - center[2]
    along = dx * u[0] + dy * u[1]
    normal = dx * -u[1] + dy * u[0]
    dist = np.sqrt((np.sqrt(along**2 + dz**2) - radius) ** 2 + normal**2)
    return np.where(dz >= 0, dist, np.inf)


def _rotation(yaw: float, tilt: float) -> np.ndarray:
    """Rotation about Z by ``yaw`` then about the new Y by ``tilt`` (radians); columns are local axes."""
    cz, sz, cy, sy = np.cos(yaw), np.sin(yaw), np.cos(tilt), np.sin(tilt)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ ry


class _ChestBuilder:
    """Draws one phantom's tissue map and intensities; every draw comes from ``self.rng`` in a fixed order.

    The caller swaps ``self.rng`` between the anatomy, findings and intensity phases (independent streams).
    """

    def __init__(self, rng: np.random.Generator, labels: dict[str, int]):
        self.rng = rng
        self.labels = labels
        self.details: dict[str, dict[str, Any]] = {}
        u = rng.uniform
        sx, sz = round(u(2.5, 3.5), 3), round(u(4.0, 6.0), 3)
        n_xy, n_z = int(round(u(380, 400) / sx)), int(round(u(290, 320) / sz))
        self.shift = np.array([u(-10, 10), u(-10, 10), u(-10, 10)])
        self.grid = _Grid((n_xy, n_xy, n_z), (sx, sx, sz), self.shift)
        half_extent = (np.array(self.grid.shape) - 1) / 2 * np.array(self.grid.spacing)
        self.origin = np.array([u(-40, 40), u(-40, 40), u(-60, 60)]) - half_extent  # world mm of voxel (0, 0, 0)
        self.tissue = np.zeros(self.grid.shape, dtype=np.uint8)

        s = self.s = u(0.9, 1.07)
        self.a = min(u(152, 166) * s, 178.0)  # body half-width (LR)
        self.b = self.a * u(0.66, 0.76)  # body half-depth (AP)
        self.fat = u(6, 22) * s
        self.wall = u(11, 16) * s
        y_ant = self.b - self.fat - self.wall
        y_post = -(self.b - self.fat - self.wall - u(26, 34) * s)
        self.cy, self.B = (y_ant + y_post) / 2, (y_ant - y_post) / 2
        self.A = self.a - self.fat - self.wall
        self.y_ant, self.y_post = y_ant, y_post
        self.z_dome_r = u(-75, -55) * s
        self.z_dome_l = self.z_dome_r - u(6, 20) * s
        self.z_top = u(112, 132) * s
        self.z_carina = self.z_top - u(85, 100) * s
        self.r_vb = u(15, 19) * s
        self.y_vb = y_post + 0.5 * self.r_vb
        self.y_canal = self.y_vb - self.r_vb - 9 * s
        self.y_oes = self.y_vb + self.r_vb + 8 * s
        self.y_tr = self.y_oes + 17 * s
        self.z_hilum = self.z_carina - 25 * s
        self.y_hilum = self.cy - 0.1 * self.B

    # -- anatomy -------------------------------------------------------------------------------------------
    def body(self) -> None:
        g, T = self.grid, self.tissue
        x2, y2 = g.axes[0][:, None], g.axes[1][None, :]

        def superellipse(ha: float, hb: float, cy: float = 0.0, p: float = 2.3) -> np.ndarray:
            return np.abs(x2 / ha) ** p + np.abs((y2 - cy) / hb) ** p < 1.0

        self.cavity2d = superellipse(self.A, self.B, self.cy, 2.0)
        self.body2d = superellipse(self.a, self.b)
        T[self.body2d] = _T["subcutaneous_fat"]
        T[superellipse(self.a - self.fat, self.b - self.fat)] = _T["muscle"]
        T[self.cavity2d] = _T["mediastinal_fat"]
        # diaphragm: one dome per side, deepest at the costophrenic recesses
        r2 = ((np.abs(x2) - 0.45 * self.A) / (0.6 * self.A)) ** 2 + ((y2 - self.cy) / self.B) ** 2
        depth = 45 * self.s
        self.dome = np.where(x2 > 0, self.z_dome_r, self.z_dome_l) - depth * np.minimum(r2, 1.2)
        below = self.cavity2d[:, :, None] & (g.Z < self.dome[:, :, None])
        liver = below & (g.X > -0.25 * self.A)
        T[below] = _T["abdomen"]
        T[liver] = _T["liver"]

    def lungs(self) -> None:
        g, T, u = self.grid, self.tissue, self.rng.uniform
        for side in (1, -1):
            xl, rxl = side * 0.42 * self.A, 0.8 * self.A
            zl = self.z_dome_r if side > 0 else self.z_dome_l
            rz = self.z_top - zl
            lo = [min(0, side * self.A * 1.1), self.cy - self.B, zl - 100]
            hi = [max(0, side * self.A * 1.1), self.cy + self.B, self.z_top]
            found = g.box(lo, hi)
            slices, X, Y, Z = found
            inside = ((X - xl) / rxl) ** 2 + ((Y - self.cy) / (1.2 * self.B)) ** 2 + ((Z - zl) / rz) ** 2 < 1.0
            inside &= self.cavity2d[slices[0], slices[1], None] & (side * X > 14 * self.s * u(0.9, 1.2))
            inside &= Z > self.dome[slices[0], slices[1], None]
            sub = T[slices]
            sub[inside & (sub == _T["mediastinal_fat"])] = _T["lung"]
        # above the lung apices the thoracic inlet is muscle, not mediastinal fat
        top = T[:, :, int(np.searchsorted(g.axes[2], self.z_top - 30 * self.s)) :]
        top[top == _T["mediastinal_fat"]] = _T["muscle"]
        self.lung_density = u(-870, -830)

    def heart(self) -> None:
        u, s = self.rng.uniform, self.s
        scale = u(*CARDIOMEGALY_SCALE) if self.labels["cardiomegaly"] else u(0.93, 1.05)
        normal = np.array([56, 44, 48]) * s
        radii = normal * scale
        base = np.array([-0.16 * self.A, self.y_ant - normal[1] - 3, self.z_dome_l + 0.55 * normal[2]])
        # an enlarged heart grows to the left, backwards and upwards from its anterior-inferior resting place
        center = base + np.array([-0.6, -0.8, 0.6]) * (radii - normal)
        rotation = _rotation(np.deg2rad(u(20, 35)), np.deg2rad(u(10, 25)))
        self.heart_center, self.heart_radii = center, radii
        slices, inside = _ellipsoid(self.grid, center, radii + 4.0, rotation)
        sub = self.tissue[slices]
        sub[inside & self.cavity2d[slices[0], slices[1], None] & _IS_SOFT[sub]] = _T["mediastinal_fat"]
        slices, inside = _ellipsoid(self.grid, center, radii, rotation)
        self.tissue[slices][inside & self.cavity2d[slices[0], slices[1], None]] = _T["heart"]
        if self.labels["cardiomegaly"]:
            self.details["cardiomegaly"] = {"scale": round(float(scale), 3)}

    def _paint_distance(self, piece: tuple, radius: float, code: int, halo: int | None = None, where=None) -> None:
        """Paint voxels closer than ``radius`` to a centreline piece, after a 3 mm ``halo`` of another tissue."""
        kind, a, b = piece
        pad = radius + 3.0
        if kind == "arch":
            center, half = (a + b) / 2, float(np.linalg.norm(b - a)) / 2
            found = self.grid.box(center - half - pad, center + half + pad)
        else:
            found = self.grid.box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
        if found is None:
            return
        slices, X, Y, Z = found
        dist = (_arch_distance if kind == "arch" else _segment_distance)(X, Y, Z, a, b)
        sub = self.tissue[slices]
        if halo is not None:
            sub[(dist < pad) & _IS_SOFT[sub]] = halo
        inside = dist < radius
        if where is not None:
            inside &= where[sub]
        sub[inside] = code

    def mediastinum(self) -> None:
        u, s = self.rng.uniform, self.s
        z_lo, z_hi = self.grid.axes[2][0] - 10, self.grid.axes[2][-1] + 10
        # aorta: ascending, arch, descending (non-contrast blood ~40 HU) in a thin fat sleeve
        self.r_ao = u(11, 14) * s
        z_arch = self.z_carina + u(20, 30) * s
        asc0 = np.array([0.05 * self.A + 8 * s, self.heart_center[1] - 0.2 * self.heart_radii[1], self.heart_center[2]])
        asc1 = np.array([asc0[0], asc0[1] - 10 * s, z_arch])
        desc0 = np.array([-(0.6 * self.r_vb + self.r_ao + 2), self.y_vb + 0.6 * self.r_vb, z_arch])
        desc1 = np.array([desc0[0] - 4 * s, desc0[1], z_lo])
        self.aorta = (("segment", asc0, asc1), ("arch", asc1, desc0), ("segment", desc0, desc1))
        for piece in self.aorta:
            self._paint_distance(piece, self.r_ao, _T["aorta"], _T["mediastinal_fat"])
        # oesophagus, trachea and main bronchi
        oes = ("segment", np.array([-6 * s, self.y_oes, z_lo]), np.array([-6 * s, self.y_oes, z_hi]))
        self._paint_distance(oes, 7 * s, _T["oesophagus"])
        carina = np.array([0.0, self.y_tr, self.z_carina])
        trachea = ("segment", carina, np.array([0.0, self.y_tr, z_hi]))
        r_tr = u(8, 10) * s
        self._paint_distance(trachea, r_tr + 2, _T["airway_wall"], _T["mediastinal_fat"])
        self._paint_distance(trachea, r_tr, _T["airway"])
        self.hila = {}
        for side, drop in ((1, 28), (-1, 22)):
            hilum = np.array([side * 42 * s, self.y_tr - 6 * s, self.z_carina - drop * s])
            self.hila[side] = hilum
            self._paint_distance(("segment", carina, hilum), 0.7 * r_tr + 2, _T["airway_wall"])
            self._paint_distance(("segment", carina, hilum), 0.7 * r_tr, _T["airway"])

    def vessels(self) -> None:
        """Pulmonary vessel trees: four generations of branching tubes from each hilum, drawn in lung only."""
        rng, s = self.rng, self.s
        segments = []
        for side, hilum in self.hila.items():
            stack = []
            for direction in ((1, 0, 0.9), (1, 0.4, -0.5), (1, -0.5, -0.6), (1, 0.7, 0.2), (0.9, -0.6, 0.5)):
                d = np.array([side * direction[0], direction[1], direction[2]], dtype=float)
                stack.append((hilum, d / np.linalg.norm(d), 0))
            while stack:
                start, direction, generation = stack.pop()
                end = start + direction * rng.uniform(30, 55) * s * 0.8**generation
                segments.append((start, end, 4.5 * s * 0.72**generation))
                if generation < 3:
                    for _ in range(2):
                        child = direction + rng.normal(0, 0.55, 3)
                        if generation == 0:
                            child[0] = side * abs(child[0])
                        stack.append((end, child / np.linalg.norm(child), generation + 1))
        self._paint_tubes(segments, _T["vessel"], _lut([_T["lung"]]))

    def _paint_tubes(self, segments: list[tuple[np.ndarray, np.ndarray, float]], code: int, where: np.ndarray) -> None:
        """Paint many thin tubes at once: centreline points dilated by a per-radius voxel stencil."""
        g = self.grid
        spacing, shape = np.array(g.spacing), np.array(g.shape)
        starts = np.array([a for a, _, _ in segments])
        steps = np.array([b for _, b, _ in segments]) - starts
        radii = np.array([r for _, _, r in segments])
        counts = np.ceil(np.linalg.norm(steps, axis=1) / (0.5 * spacing.min())).astype(int) + 1
        owner = np.repeat(np.arange(len(segments)), counts)
        t = (np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)) / np.repeat(counts - 1, counts)
        points = starts[owner] + t[:, None] * steps[owner]
        centres = np.rint((points + self.shift) / spacing + (shape - 1) / 2).astype(np.int64)
        for radius in np.unique(radii):
            reach = np.floor(radius / spacing).astype(int)
            offsets = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
            offsets = offsets[((offsets * spacing) ** 2).sum(1) <= radius**2 + 1e-6]
            voxels = (centres[radii[owner] == radius][:, None, :] + offsets[None]).reshape(-1, 3)
            voxels = voxels[np.all((voxels >= 0) & (voxels < shape), axis=1)]
            flat = np.ravel_multi_index(voxels.T, g.shape)
            flat = flat[where[self.tissue.ravel()[flat]]]
            np.put(self.tissue, flat, code)

    def skeleton(self) -> None:
        g, T, u, s = self.grid, self.tissue, self.rng.uniform, self.s
        x2, y2 = g.axes[0][:, None], g.axes[1][None, :]
        # ribs: tubes running around the chest wall, descending anteriorly
        ar, br = self.A + 0.45 * self.wall, self.B + 0.45 * self.wall
        rho = np.sqrt((x2 / ar) ** 2 + ((y2 - self.cy) / br) ** 2)
        radial = (rho - 1.0) * (ar + br) / 2
        phi = np.arctan2((y2 - self.cy) / br, np.abs(x2) / ar)  # -pi/2 posterior ... +pi/2 anterior
        ring = (np.abs(radial) < 5.0 * s) & (phi > -np.pi / 2 + 0.3) & (phi < np.pi / 2 - 0.35)
        ii, jj = np.nonzero(ring)
        drop = 160 * s * (phi[ii, jj] + np.pi / 2) / np.pi
        spacing, first = u(25, 29) * s, self.z_top + 8 * s
        pos = (g.axes[2][None, :] + drop[:, None] - first) / spacing
        index = np.rint(pos)
        resid = (pos - index) * spacing
        in_rib = (resid / (5.0 * s)) ** 2 + (radial[ii, jj][:, None] / (3.8 * s)) ** 2 < 1.0
        in_rib &= (index <= 0) & (index > -13)  # twelve pairs
        rows, ks = np.nonzero(in_rib)
        T[ii[rows], jj[rows], ks] = _T["rib"]
        # sternum
        found = g.box([-14 * s, self.y_ant + 1, self.z_dome_r - 10], [14 * s, self.y_ant + 12 * s, g.axes[2][-1]])
        if found is not None:
            T[found[0]] = _T["sternum"]
        # vertebrae: body with cortex and discs, posterior arch, spinous and transverse processes, canal
        r = np.sqrt(x2**2 + (y2 - self.y_vb) ** 2)
        halo, body, cortex = r < self.r_vb + 4, r < self.r_vb, (r < self.r_vb) & (r > self.r_vb - 2.5)
        rc = np.sqrt(x2**2 + (y2 - self.y_canal) ** 2)
        arch = (rc < 13 * s) & (y2 < self.y_canal + 2)  # laminae
        arch |= (np.abs(x2) < 4 * s) & (y2 < self.y_canal) & (y2 > self.y_canal - 38 * s)  # spinous process
        arch |= (np.abs(x2) < 34 * s) & (np.abs(y2 - self.y_canal) < 4.5 * s)  # transverse processes
        canal = rc < 7.5 * s
        paraspinal = T[halo & ~body]  # (voxels, Z) copy: soft tissue, not lung, right next to the vertebra
        paraspinal[paraspinal == _T["lung"]] = _T["mediastinal_fat"]
        T[halo & ~body] = paraspinal
        T[arch] = _T["vertebral_body"]
        T[body] = _T["vertebral_body"]
        T[cortex] = _T["cortical_bone"]
        T[canal] = _T["spinal_canal"]
        period, phase = u(25, 29) * s, u(0, 30)
        discs = np.nonzero(np.mod(g.axes[2] - phase, period) < 5.5 * s)[0]
        sub = T[:, :, discs]
        sub[body] = _T["disc"]
        T[:, :, discs] = sub

    # -- findings ------------------------------------------------------------------------------------------
    def lobe_of(self, xyz: np.ndarray) -> np.ndarray:
        """Lobe index (into :data:`LOBES`) of patient coordinates ``(..., 3)``: planar oblique/horizontal fissures."""
        x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
        lower = z < self.z_hilum + 0.85 * (self.y_hilum - y)
        right = x > 0
        middle = right & ~lower & (z < self.z_hilum + 8 * self.s)
        return np.where(right, np.where(lower, 2, np.where(middle, 1, 0)), np.where(lower, 4, 3))

    def _pick(self, candidates: np.ndarray) -> np.ndarray:
        return self.grid.coords(candidates[self.rng.integers(len(candidates))][None])[0]

    def emphysema(self) -> None:
        u, T = self.rng.uniform, self.tissue
        z_from = self.z_dome_r + u(0.0, 0.5) * (self.z_top - self.z_dome_r)
        k0 = int(np.searchsorted(self.grid.axes[2], z_from))
        sub = T[:, :, k0:]
        sub[sub == _T["lung"]] = _T["emphysema"]
        candidates = np.flatnonzero(T == _T["emphysema"])
        if len(candidates) == 0:
            self.labels["emphysema"] = 0
            return
        n_bullae = int(self.rng.integers(2, 7))
        for _ in range(n_bullae):
            radius = u(7, 16) * self.s
            found = _ellipsoid(self.grid, self._pick(candidates), (radius,) * 3)
            if found is not None:
                slices, inside = found
                part = T[slices]
                part[inside & ((part == _T["emphysema"]) | (part == _T["vessel"]))] = _T["bulla"]
        self.details["emphysema"] = {"from_z_mm": round(float(z_from), 1), "bullae": n_bullae}

    def effusion(self) -> None:
        g, u, T = self.grid, self.rng.uniform, self.tissue
        side_name = SIDES[int(self.rng.integers(3))]
        sides = {"left": (-1,), "right": (1,), "bilateral": (1, -1)}[side_name]
        for side in sides:
            depth_mm, height = u(30, 60) * self.s, u(60, 120) * self.s
            z_limit = (self.z_dome_r if side > 0 else self.z_dome_l) + height
            midline = int(np.searchsorted(g.axes[0], 0))
            half = slice(midline, None) if side > 0 else slice(0, midline)
            x = g.axes[0][half]
            floor = self.cy - self.B * np.sqrt(np.clip(1 - (x / self.A) ** 2, 0, 1))
            depth = depth_mm * np.clip((z_limit - g.axes[2]) / 40.0, 0, 1)
            level = floor[:, None, None] + depth[None, None, :]
            sub = T[half]
            sub[(g.Y < level) & _IS_PARENCHYMA[sub]] = _T["effusion"]
        self.details["pleural_effusion"] = {"side": side_name}

    def _lobe_candidates(self, lobe: int, codes: Sequence[int]) -> np.ndarray:
        flat = np.flatnonzero(np.take(_lut(codes), self.tissue))
        return flat[self.lobe_of(self.grid.coords(flat)) == lobe]

    def consolidation(self) -> None:
        u = self.rng.uniform
        order = self.rng.permutation(len(LOBES))
        for lobe in order:
            candidates = self._lobe_candidates(int(lobe), _PARENCHYMA)
            if len(candidates) < 200:
                continue
            for _ in range(5):
                radius = u(30, 50) * self.s
                found = _ellipsoid(self.grid, self._pick(candidates), (radius, radius, 1.2 * radius))
                slices, inside = found
                sub = self.tissue[slices]
                x, y, z = (self.grid.axes[i][slices[i]] for i in range(3))
                xyz = np.stack(np.broadcast_arrays(x[:, None, None], y[None, :, None], z[None, None, :]), -1)
                region = inside & _IS_PARENCHYMA[sub] & (self.lobe_of(xyz) == lobe)
                volume_ml = float(region.sum() * np.prod(self.grid.spacing)) / 1000
                if volume_ml >= 25:  # large enough to be seen at 6 mm
                    sub[region] = _T["consolidation"]
                    self.details["consolidation"] = {"lobe": LOBES[int(lobe)], "volume_ml": round(volume_ml, 1)}
                    return
        self.labels["consolidation"] = 0  # no room (lungs filled by other findings): report it as absent

    def nodule(self) -> None:
        u = self.rng.uniform
        diameter = u(*NODULE_DIAMETER_MM)
        radius = diameter / 2
        ratios = u(0.85, 1.15, size=3)
        for lobe in self.rng.permutation(len(LOBES)):
            candidates = self._lobe_candidates(int(lobe), (_T["lung"], _T["emphysema"], _T["vessel"]))
            if len(candidates) == 0:
                continue
            for _ in range(30):
                center = self._pick(candidates)
                found = _ellipsoid(self.grid, center, (radius + 4,) * 3)
                slices, margin = found
                if margin.sum() == 0 or _IS_PARENCHYMA[self.tissue[slices][margin]].mean() < 0.97:
                    continue
                found = _ellipsoid(self.grid, center, radius * ratios)
                slices, inside = found
                if inside.sum() == 0:
                    continue
                self.tissue[slices][inside] = _T["nodule"]
                self.details["lung_nodule"] = {
                    "lobe": LOBES[int(lobe)],
                    "size": int(round(diameter)),
                    "center_mm": [round(float(c), 1) for c in center],  # patient frame
                }
                return
        self.labels["lung_nodule"] = 0  # no room: report it as absent

    def calcification(self) -> None:
        u, T = self.rng.uniform, self.tissue
        (_, asc0, asc1), _, (_, desc0, desc1) = self.aorta
        desc1 = np.array([desc1[0], desc1[1], max(desc1[2], self.z_dome_l - 40)])
        pieces = (("segment", asc0, asc1), ("arch", asc1, desc0), ("segment", desc0, desc1))
        arch_length = np.pi * np.linalg.norm(desc0 - asc1) / 2
        lengths = np.array([np.linalg.norm(asc1 - asc0), arch_length, np.linalg.norm(desc1 - desc0)])
        n_plaques = int(self.rng.integers(5, 11))
        painted = 0
        for _ in range(n_plaques):
            piece = int(self.rng.choice(3, p=lengths / lengths.sum()))
            kind, a, b = pieces[piece]
            t = u(0, 1)
            if kind == "arch":
                radius = np.linalg.norm(b - a) / 2
                along = (b - a) / (2 * radius)
                angle = np.pi * t
                point = (a + b) / 2 - np.cos(angle) * radius * along + np.array([0, 0, np.sin(angle) * radius])
                tangent = np.sin(angle) * along + np.array([0, 0, np.cos(angle)])
            else:
                point, tangent = a + t * (b - a), (b - a) / np.linalg.norm(b - a)
            normal = np.cross(tangent, self.rng.normal(size=3))
            normal /= np.linalg.norm(normal)
            size = u(8, 14) * self.s
            found = self.grid.box(point + normal * self.r_ao - size, point + normal * self.r_ao + size)
            if found is None:
                continue
            slices, X, Y, Z = found
            center = point + normal * self.r_ao
            near = (X - center[0]) ** 2 + (Y - center[1]) ** 2 + (Z - center[2]) ** 2 < size**2
            dist = (_arch_distance if kind == "arch" else _segment_distance)(X, Y, Z, a, b)
            sub = T[slices]
            plaque = near & (dist > self.r_ao - 4.5) & (dist < self.r_ao + 1.0) & _IS_SOFT[sub]
            sub[plaque] = _T["calcification"]
            painted += int(plaque.sum())
        if painted == 0:
            self.labels["arterial_wall_calcification"] = 0
            return
        self.details["arterial_wall_calcification"] = {"plaques": n_plaques}

    # -- intensities ---------------------------------------------------------------------------------------
    def to_hu(self) -> np.ndarray:
        u, g, T = self.rng.uniform, self.grid, self.tissue
        table = np.full(256, -1000.0, dtype=np.float32)
        for name, code in _T.items():
            table[code] = _HU[name] + (u(-6, 6) if name not in ("air", "airway") else 0.0)
        table[_T["lung"]] = self.lung_density
        table[_T["emphysema"]] = u(-960, -940)
        table[_T["bulla"]] = u(-1000, -985)
        table[_T["effusion"]] = u(5, 20)
        table[_T["consolidation"]] = u(10, 50)
        table[_T["nodule"]] = u(30, 60)
        table[_T["calcification"]] = u(900, 1400)
        gradient, noise_sd = u(25, 50), u(8, 14)
        # outside the body stays exactly -1000 HU (as a scanner's padding); work on the body's bounding box
        rows, cols = np.nonzero(self.body2d)
        crop = (slice(max(rows.min() - 2, 0), rows.max() + 3), slice(max(cols.min() - 2, 0), cols.max() + 3))
        t = T[crop]
        hu = np.take(table, t)
        # gravity-dependent density gradient of aerated lung (posterior denser, supine patient)
        aerated = (t == _T["lung"]) | (t == _T["emphysema"])
        ramp = (gradient * (self.cy - g.axes[1][crop[1]]) / self.B).astype(np.float32)
        hu += aerated * ramp[None, :, None]
        # mild partial-volume blur (separable 3-tap) to soften the label edges
        for axis, centre in ((0, 8.0), (1, 8.0), (2, 6.0)):
            hu = _blur3(hu, axis, centre)
        hu *= np.float32(1.0 / (10.0 * 10.0 * 8.0))
        noise = _noise(hu.shape, self.rng, noise_sd)
        noise[t == 0] = 0.0
        hu += noise
        out = np.full(T.shape, -1000, dtype=np.int16)
        out[crop] = np.clip(np.rint(hu), -1024, 3071)
        return out

    def lesion_mask(self) -> np.ndarray:
        table = np.zeros(256, dtype=np.uint8)
        for code, klass in _MASK_OF_TISSUE.items():
            table[code] = klass
        if self.labels["cardiomegaly"]:
            table[_T["heart"]] = KEYS_TO_CLASS["cardiomegaly"]
        return np.take(table, self.tissue)


_NOISE_BANK_SIZE = 1 << 22


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed bank of standard normal samples (the same in every process), cheaper than fresh draws per case."""
    return np.random.default_rng(20240725).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)


def _noise(shape: tuple[int, ...], rng: np.random.Generator, sd: float) -> np.ndarray:
    """Gaussian field of ``shape`` and standard deviation ``sd``: a random window of the noise bank, random sign."""
    bank, n = _noise_bank(), int(np.prod(shape))
    scale = np.float32(sd * rng.choice([-1.0, 1.0]))
    if n > len(bank):
        return rng.standard_normal(shape, dtype=np.float32) * scale
    start = int(rng.integers(len(bank) - n + 1))
    return bank[start : start + n].reshape(shape) * scale


def _blur3(volume: np.ndarray, axis: int, centre: float) -> np.ndarray:
    """Unnormalised ``[1, centre, 1]`` filter along ``axis`` with edge replication (the caller divides by the sum)."""
    v = np.moveaxis(volume, axis, 0)
    out = v * np.float32(centre)
    out[1:] += v[:-1]
    out[:-1] += v[1:]
    out[0] += v[0]
    out[-1] += v[-1]
    return np.moveaxis(out, 0, axis)


def write_report(labels: dict[str, int], details: dict[str, dict[str, Any]], rng: np.random.Generator) -> str:
    """Free-text report stating present findings and negating absent ones, in shuffled order.

    Args:
        labels: ``{finding_key: 0 | 1}``.
        details: per present finding, ``lobe``/``side``/``size`` used to fill the sentence templates.
        rng: random generator for phrasing, order and normal-anatomy sentences.

    Returns:
        ``"FINDINGS: ...\\nIMPRESSION: ..."``.
    """
    sentences, impression = [], []
    for finding in FINDINGS:
        present = bool(labels.get(finding.key, 0))
        fill = _fill_values(details.get(finding.key, {}))
        templates = finding.positive if present else finding.negative
        sentences.append(_capitalise(templates[int(rng.integers(len(templates)))].format(**fill)))
        if present:
            options = _IMPRESSION[finding.key]
            impression.append(_capitalise(options[int(rng.integers(len(options)))].format(**fill)))
    n_normal = int(rng.integers(2, 5))
    sentences += [_NORMAL_SENTENCES[i] for i in rng.choice(len(_NORMAL_SENTENCES), n_normal, replace=False)]
    sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    impression = [impression[i] for i in rng.permutation(len(impression))] or [_NO_FINDINGS_IMPRESSION]
    return "FINDINGS: " + " ".join(sentences) + "\nIMPRESSION: " + " ".join(impression)


def _fill_values(detail: dict[str, Any]) -> dict[str, str]:
    side, lobe = str(detail.get("side", "")), str(detail.get("lobe", ""))
    size = str(detail.get("size", ""))
    return {"side": side, "Side": side.capitalize(), "lobe": lobe, "Lobe": lobe.capitalize(), "size": size}


def _capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


_FILM_WINDOW = (1.2, 7.0)  # line integral of attenuation mapped to black ... white
_FILM_GAMMA = 1.4
_FILM_MASK_ORDER = ("emphysema", "cardiomegaly", "pleural_effusion", "consolidation", "arterial_wall_calcification")
_FILM_MASK_PRIORITY = tuple(KEYS_TO_CLASS[k] for k in (*_FILM_MASK_ORDER, "lung_nodule"))  # most focal drawn last
_MU_WATER = 0.02  # 1/mm at an effective energy of ~60 keV


def project_radiograph(
    hu: np.ndarray, mask: np.ndarray | None, spacing: Sequence[float], size: int = 256
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Digitally reconstructed radiograph of a RAS volume, displayed as a PA chest film.

    Attenuation ``mu = mu_water * (1 + HU / 1000)``, with the excess attenuation of dense tissue (HU > 0) raised by
    half as at diagnostic energies, is integrated along the antero-posterior axis. The line integral ``-log(I / I0)`` is
    windowed and gamma-compressed, so bone is bright and air dark. The film shows the patient's right on the
    viewer's left and the head at the top, on ``size x size`` square pixels covering the larger of the volume's
    lateral and cranio-caudal extents (linear interpolation; nearest neighbour for the mask).

    Args:
        hu: ``(X, Y, Z)`` Hounsfield units, RAS axes.
        mask: optional ``(X, Y, Z)`` lesion label map. A film pixel takes the most focal class on its ray
            (nodule > calcification > consolidation > effusion > cardiomegaly > emphysema).
        spacing: voxel size in mm along X, Y, Z.
        size: output side length in pixels.

    Returns:
        ``(image, mask_2d, pixel_mm)``: uint16 ``(size, size)`` film, uint8 ``(size, size)`` projected mask
        (None without ``mask``), and the square pixel size in mm.
    """
    sx, sy, sz = (float(v) for v in spacing)
    h = np.maximum(hu, -1000)
    # sum over the ray of (1 + h / 1000 + max(h, 0) / 2000), in integers
    total = 2 * h.sum(axis=1, dtype=np.int64) + np.maximum(h, 0).sum(axis=1, dtype=np.int64)
    line = (hu.shape[1] + total / 2000.0) * (_MU_WATER * sy)
    film = np.clip((line - _FILM_WINDOW[0]) / (_FILM_WINDOW[1] - _FILM_WINDOW[0]), 0.0, 1.0) ** _FILM_GAMMA
    nx, nz = film.shape
    pixel = max(nx * sx, nz * sz) / size
    # film column c (left = patient's right) and row r (top = superior) in volume index space
    centre = np.arange(size) - (size - 1) / 2
    x_index = (nx - 1) / 2 - centre * pixel / sx
    z_index = (nz - 1) / 2 - centre * pixel / sz
    image = _interpolation_matrix(z_index, nz) @ film.T @ _interpolation_matrix(x_index, nx).T
    image16 = np.rint(np.clip(image, 0.0, 1.0) * 65535).astype(np.uint16)
    if mask is None:
        return image16, None, pixel
    present = np.bitwise_or.reduce(np.left_shift(np.uint8(1), mask), axis=1)  # (X, Z) bit c set if class c on ray
    projected = np.zeros((nx, nz), dtype=np.uint8)
    for klass in _FILM_MASK_PRIORITY:
        projected[(present >> klass) & 1 == 1] = klass
    xi, zi = np.rint(x_index).astype(int), np.rint(z_index).astype(int)
    inside = ((zi >= 0) & (zi < nz))[:, None] & ((xi >= 0) & (xi < nx))[None, :]
    mask2d = np.where(inside, projected[np.clip(xi, 0, nx - 1)[None, :], np.clip(zi, 0, nz - 1)[:, None]], 0)
    return image16, mask2d.astype(np.uint8), pixel


def _interpolation_matrix(position: np.ndarray, n: int) -> np.ndarray:
    """``(len(position), n)`` linear-interpolation weights; positions outside ``[0, n - 1]`` get zero rows."""
    weights = np.zeros((len(position), n))
    low = np.floor(position).astype(int)
    frac = position - low
    for offset, w in ((0, 1.0 - frac), (1, frac)):
        index = low + offset
        ok = (index >= 0) & (index < n) & (position >= -0.5) & (position <= n - 0.5)
        weights[np.nonzero(ok)[0], index[ok]] = w[ok]
    return weights


def _case_rngs(seed: int, split: str, index: int) -> list[np.random.Generator]:
    """Independent anatomy, findings, intensity and text generators of one case, the same for any dataset size.

    Separate streams make a phantom and its twin with other findings share anatomy and intensities exactly.
    """
    streams = np.random.SeedSequence(entropy=seed, spawn_key=(_SPLITS[split], index)).spawn(4)
    return [np.random.default_rng(stream) for stream in streams]


def make_phantom(
    seed: int = 0, split: str = "training", index: int = 0, labels: dict[str, int] | None = None
) -> Phantom:
    """Build one phantom, deterministic in ``(seed, split, index)``.

    Args:
        seed: dataset seed.
        split: ``training``, ``image_only``, ``validation`` or ``test``; each split draws its own cases.
        index: case number within the split.
        labels: force findings on (1) or off (0); unspecified findings are drawn with :data:`FINDING_PROBABILITY`.
            Anatomy, findings, intensities and text use separate random streams, so the same case with other
            ``labels`` is its exact counterfactual twin. A finding that finds no room (e.g. a consolidation whose
            lobes are all filled by effusion) is left out and its label set to 0, so labels always match the image.

    Returns:
        The :class:`Phantom` (volume, lesion mask, tissue map, affine, labels, details, report).

    Raises:
        ValueError: unknown ``split`` or finding key.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(_SPLITS)}")
    rng, findings_rng, intensity_rng, text_rng = _case_rngs(seed, split, index)
    drawn = rng.random(len(FINDINGS)) < FINDING_PROBABILITY
    wanted = {f.key: int(d) for f, d in zip(FINDINGS, drawn)}
    unknown = set(labels or {}) - set(wanted)
    if unknown:
        raise ValueError(f"unknown finding keys {sorted(unknown)}; known: {list(wanted)}")
    wanted.update({k: int(bool(v)) for k, v in (labels or {}).items()})
    chest = _ChestBuilder(rng, wanted)
    chest.body()
    chest.lungs()
    chest.heart()
    chest.mediastinum()
    chest.vessels()
    chest.skeleton()
    chest.rng = findings_rng
    if wanted["emphysema"]:
        chest.emphysema()
    if wanted["pleural_effusion"]:
        chest.effusion()
    if wanted["consolidation"]:
        chest.consolidation()
    if wanted["lung_nodule"]:
        chest.nodule()
    if wanted["arterial_wall_calcification"]:
        chest.calcification()
    chest.rng = intensity_rng
    hu = chest.to_hu()
    affine = np.diag([*chest.grid.spacing, 1.0])
    affine[:3, 3] = chest.origin
    geometry = {
        "cavity_center_y": float(chest.cy), "cavity_half_width": float(chest.A), "cavity_half_depth": float(chest.B),
        "shift_x": float(chest.shift[0]), "shift_y": float(chest.shift[1]), "shift_z": float(chest.shift[2]),
    }  # fmt: skip
    return Phantom(
        case_id=f"{_CASE_PREFIX[split]}_{index:05d}",
        hu=hu,
        mask=chest.lesion_mask(),
        tissue=chest.tissue,
        affine=affine,
        labels=dict(chest.labels),
        details=chest.details,
        report=write_report(chest.labels, chest.details, text_rng),
        geometry=geometry,
    )


# -- writing ---------------------------------------------------------------------------------------------------
def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 bytes with scanner-anatomical qform/sform and a zero gzip timestamp (byte-reproducible)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(array.dtype)
    header.set_data_shape(array.shape)
    header.set_xyzt_units("mm")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header["vox_offset"] = 352
    payload = header.binaryblock + b"\0\0\0\0" + array.T.tobytes()  # no extensions; voxels in Fortran order
    return gzip.compress(payload, compresslevel=1, mtime=0)


def _png_bytes(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 or uint16 grey image."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _case_files(case_id: str) -> dict[str, str]:
    return {
        "ct": f"ct/{case_id}.nii.gz",
        "ct_mask": f"ct_mask/{case_id}.nii.gz",
        "cxr": f"cxr/{case_id}.png",
        "cxr_mask": f"cxr_mask/{case_id}.png",
    }


def _write_case(out_dir: str, seed: int, split: str, index: int, size_2d: int) -> tuple[dict, dict]:
    """Generate one case, write its four files, return its 3D and 2D datalist records."""
    phantom = make_phantom(seed, split, index)
    image_2d, mask_2d, pixel = project_radiograph(phantom.hu, phantom.mask, phantom.spacing, size_2d)
    files = _case_files(phantom.case_id)
    payloads = {
        "ct": _nifti_bytes(phantom.hu, phantom.affine),
        "ct_mask": _nifti_bytes(phantom.mask, phantom.affine),
        "cxr": _png_bytes(image_2d),
        "cxr_mask": _png_bytes(mask_2d),
    }
    for key, payload in payloads.items():
        Path(out_dir, files[key]).write_bytes(payload)
    paired = split != "image_only"
    section = "training" if split == "image_only" else split
    records = []
    for image_key, spacing in (("ct", [round(v, 4) for v in phantom.spacing]), ("cxr", [round(pixel, 4)] * 2)):
        meta: dict[str, Any] = {"case_id": phantom.case_id, "split": section, "spacing": spacing, "paired": paired}
        record: dict[str, Any] = {"image": files[image_key]}
        if paired:
            record.update(report=phantom.report, labels=dict(phantom.labels), mask=files[f"{image_key}_mask"])
        else:  # image-only: no report; labels and mask are kept out of sight, for evaluation only
            meta.update(labels=dict(phantom.labels), mask=files[f"{image_key}_mask"])
        meta["findings"] = phantom.details
        record["meta"] = meta
        records.append(record)
    return records[0], records[1]


def generate_dataset(
    out_dir: str | os.PathLike,
    num_train: int = 300,
    num_image_only: int = 100,
    num_val: int = 60,
    num_test: int = 120,
    seed: int = 0,
    dims: int = 3,
    image_size_2d: int = 256,
    num_workers: int = 1,
) -> str:
    """Write a paired phantom dataset (3D CT and 2D radiographs of the same phantoms) and its datalists.

    Layout of ``out_dir``: ``ct/`` (int16 HU NIfTI), ``ct_mask/`` (uint8 lesion maps), ``cxr/`` (16-bit PNG DRRs),
    ``cxr_mask/`` (uint8 PNG projected lesion maps), ``datalist_3d.json``, ``datalist_2d.json`` (the contract of
    :mod:`common.data.contract`, relative paths) and ``phantoms.json`` (generator version, seed, sizes, mask classes).
    The ``training`` section holds ``num_train`` paired records followed by ``num_image_only`` records without
    report, whose labels and mask sit in ``meta`` for evaluation only. The same ``seed`` gives byte-identical files.

    Args:
        out_dir: output folder (created).
        num_train: paired training cases.
        num_image_only: image-only training cases.
        num_val: validation cases.
        num_test: test cases.
        seed: dataset seed; each split draws its own cases, so sizes can change without changing other splits.
        dims: which datalist path to return, 3 (CT) or 2 (radiographs); both are always written.
        image_size_2d: side of the square radiographs in pixels.
        num_workers: processes used to generate cases (1: in this process).

    Returns:
        Path of ``datalist_3d.json`` or ``datalist_2d.json``.
    """
    counts = {"training": num_train, "image_only": num_image_only, "validation": num_val, "test": num_test}
    for name, value in {**counts, "image_size_2d": image_size_2d, "num_workers": num_workers}.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    if image_size_2d < 16 or num_workers < 1:
        raise ValueError("image_size_2d must be >= 16 and num_workers >= 1")
    out = Path(out_dir)
    for folder in ("ct", "ct_mask", "cxr", "cxr_mask"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), int(seed), split, i, int(image_size_2d)) for split, n in counts.items() for i in range(n)]
    if num_workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            results = list(pool.map(_write_case, *zip(*jobs), chunksize=4))
    else:
        results = [_write_case(*job) for job in jobs]
    lists: dict[int, dict[str, list]] = {3: {s: [] for s in ("training", "validation", "test")}, 2: {}}
    lists[2] = {s: [] for s in lists[3]}
    for job, (record_3d, record_2d) in zip(jobs, results):
        section = "training" if job[2] == "image_only" else job[2]
        lists[3][section].append(record_3d)
        lists[2][section].append(record_2d)
    description = (
        f"Embedded chest phantoms ({GENERATOR_VERSION}, seed {seed}); labels and lesion masks follow "
        "common.data.findings.FINDINGS (mask class i + 1 = FINDINGS[i])."
    )
    for d, modality in ((3, "CT"), (2, "radiograph (DRR)")):
        content = {"name": f"{GENERATOR_VERSION} {modality}", "description": description, **lists[d]}
        (out / f"datalist_{d}d.json").write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    manifest = {
        "generator": GENERATOR_VERSION,
        "seed": int(seed),
        "sizes": {k: int(v) for k, v in counts.items()},
        "image_size_2d": int(image_size_2d),
        "mask_classes": {"0": "background", **{str(i + 1): f.key for i, f in enumerate(FINDINGS)}},
    }
    (out / "phantoms.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return str(out / f"datalist_{dims}d.json")


if __name__ == "__main__":
    import fire

    fire.Fire(generate_dataset)
