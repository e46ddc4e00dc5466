"""Anatomy, study settings and intensities of one chest phantom (the findings are painted by
:mod:`common.data.phantom_lesions`).

Every draw comes from the builder's ``rng`` in a fixed order; :func:`common.data.phantom.make_phantom` swaps the
generator between the anatomy, findings and intensity phases, so a case with other findings is its exact
counterfactual twin. Inter-patient variation (all continuous unless named): body size, habitus (fat thickness,
AP/LR ratio), lung height and width, heart size and orientation, diaphragm height and right-left difference,
sex (breast tissue), arms up or down, patient yaw on the table and position in the field of view; normal variants
(pectus excavatum, thoracic scoliosis, azygos fissure) and incidental findings (liver cyst, vertebral
osteophytes); study settings (field of view, in-plane pixel size, slice spacing and thickness, reconstruction
kernel, noise, IV contrast).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.data.phantom_geometry import Grid, arch_distance, ellipsoid, lut, paint_tubes, rotation, segment_distance

__all__ = ["TISSUES", "TISSUE_HU", "ChestAnatomy", "draw_study"]

# Tissue classes (codes of Phantom.tissue) and their nominal non-contrast HU.
_TISSUE_LIST: tuple[tuple[str, int], ...] = (
    ("air", -1000), ("subcutaneous_fat", -100), ("muscle", 45), ("mediastinal_fat", -85), ("liver", 58),
    ("abdomen", 35), ("lung", -850), ("emphysema", -950), ("bulla", -990), ("vessel", 40), ("heart", 40),
    ("aorta", 42), ("calcification", 950), ("airway", -1000), ("airway_wall", 30), ("oesophagus", 35),
    ("vertebral_body", 400), ("cortical_bone", 950), ("rib", 650), ("sternum", 450), ("spinal_canal", 25),
    ("effusion", 12), ("consolidation", 30), ("nodule", 45), ("disc", 85),
    # v2 anatomy
    ("svc", 40), ("breast", -40), ("humerus", 700), ("scapula", 600), ("lymph_node", 40), ("fissure", -300),
    ("liver_cyst", 8), ("osteophyte", 700), ("bronchus_wall", 20),
    # v2 findings
    ("pericardial_fluid", 12), ("coronary_calcification", 700), ("device_metal", 3071), ("device_plastic", 600),
    ("hernia_air", -1000), ("hernia_content", 25), ("hernia_wall", 40), ("enlarged_node", 42),
    ("atelectasis", 35), ("subsolid_nodule", -400), ("ground_glass", -500), ("fibrosis", -150),
    ("mosaic_low", -930), ("thick_bronchial_wall", 25), ("ectatic_wall", 25), ("ectatic_lumen", -1000),
    ("septal_line", -400),
)  # fmt: skip
TISSUES: dict[str, int] = {name: code for code, (name, _) in enumerate(_TISSUE_LIST)}
TISSUE_HU: dict[str, int] = dict(_TISSUE_LIST)
_T = TISSUES

LUNG_LIKE = lut([_T[k] for k in ("lung", "emphysema", "bulla", "vessel", "mosaic_low", "fissure", "bronchus_wall")])
"""Aerated parenchyma (with its vessels and small bronchi): where lung findings may be painted."""
SOFT = lut(
    [_T[k] for k in ("mediastinal_fat", "muscle", "subcutaneous_fat", "lung", "emphysema", "vessel", "heart",
                     "aorta", "mosaic_low", "svc", "lymph_node", "breast")]
)  # fmt: skip
"""Tissues that halos, plaques and nodes may overwrite (never bone or airway)."""

#: reconstruction kernels: (in-plane blur sigma in mm, edge enhancement, noise correlation sigma in voxels)
KERNELS: dict[str, tuple[float, float, float]] = {"soft tissue": (1.0, 0.0, 0.9), "lung": (0.5, 0.35, 0.0)}


def draw_study(rng: np.random.Generator) -> dict[str, Any]:
    """Acquisition and patient-level settings of one case (first draws of the anatomy stream)."""
    u = rng.uniform
    spacing_z = float(rng.choice([2.5, 3.0, 4.0, 5.0], p=[0.2, 0.3, 0.25, 0.25]))
    arms = "down" if rng.random() < 0.25 else "up"
    return {
        "sex": "female" if rng.random() < 0.45 else "male",
        "contrast": bool(rng.random() < 0.4),
        "kernel": "lung" if rng.random() < 0.35 else "soft tissue",
        "arms": arms,
        "slice_spacing_mm": spacing_z,
        "slice_thickness_mm": round(spacing_z * float(u(1.0, 1.6)), 2),
        "pixel_mm": round(float(u(2.4, 3.4)), 3),
        "fov_mm": round(float(u(450, 500) if arms == "down" else u(350, 480)), 1),  # arms widen the FOV
        "z_extent_mm": round(float(u(290, 350)), 1),
        "noise_hu": round(float(np.exp(u(np.log(6), np.log(28)))), 1),
        "yaw_deg": round(float(rng.normal(0, 3.5)), 2),
        "variants": [
            name
            for name, p in (("pectus excavatum", 0.06), ("thoracic scoliosis", 0.1), ("azygos fissure", 0.08))
            if rng.random() < p
        ],  # fmt: skip
        "incidental": [name for name, p in (("liver cyst", 0.15), ("vertebral osteophytes", 0.3)) if rng.random() < p],
    }


class ChestAnatomy:
    """Draws one phantom's normal anatomy into a tissue map; findings are painted on top by a subclass."""

    def __init__(self, rng: np.random.Generator, labels: dict[str, int]):
        self.rng = rng
        self.labels = labels
        self.details: dict[str, dict[str, Any]] = {}
        self.study = draw_study(rng)
        u, st = rng.uniform, self.study
        s = self.s = u(0.86, 1.1)  # body size
        habitus = u(0.0, 1.0)  # lean ... obese
        self.fat = (5 + 30 * habitus**1.5) * s
        self.a = min(u(145, 162) * s + 0.6 * self.fat, 200.0)  # body half-width (LR)
        self.b = self.a * u(0.62, 0.78)  # body half-depth (AP)
        self.wall = u(10, 16) * s
        y_ant = self.b - self.fat - self.wall
        y_post = -(self.b - self.fat - self.wall - u(24, 34) * s)
        self.cy, self.B = (y_ant + y_post) / 2, (y_ant - y_post) / 2
        self.A = self.a - self.fat - self.wall
        self.y_ant, self.y_post = y_ant, y_post
        self.lung_width = u(0.72, 0.88)
        self.z_dome_r = u(-95, -45) * s  # diaphragm height: inspiration depth and habitus
        self.z_dome_l = self.z_dome_r - u(0, 24) * s
        self.z_top = u(105, 135) * s
        self.z_carina = self.z_top - u(85, 100) * s
        self.heart_size = u(0.86, 1.08)
        self.r_vb = u(15, 19) * s
        self.y_vb = y_post + 0.5 * self.r_vb
        self.y_canal = self.y_vb - self.r_vb - 9 * s
        self.y_oes = self.y_vb + self.r_vb + 8 * s
        self.y_tr = self.y_oes + 17 * s
        self.z_hilum = self.z_carina - 25 * s
        self.y_hilum = self.cy - 0.1 * self.B
        self.pectus = u(15, 35) * s if "pectus excavatum" in st["variants"] else 0.0
        self.scoliosis = u(8, 18) * s * rng.choice([-1, 1]) if "thoracic scoliosis" in st["variants"] else 0.0
        # field of view: the patient sits off-centre (table height, positioning)
        sx, sz = st["pixel_mm"], st["slice_spacing_mm"]
        n_xy, n_z = int(round(st["fov_mm"] / sx)), int(round(st["z_extent_mm"] / sz))
        self.shift = np.array([u(-25, 25), u(-10, 40), u(-20, 20)])
        self.grid = Grid((n_xy, n_xy, n_z), (sx, sx, sz), self.shift)
        half_extent = (np.array(self.grid.shape) - 1) / 2 * np.array(self.grid.spacing)
        self.origin = np.array([u(-40, 40), u(-40, 40), u(-60, 60)]) - half_extent  # world mm of voxel (0, 0, 0)
        self.tissue = np.zeros(self.grid.shape, dtype=np.uint8)
        self.bronchi: list[tuple[np.ndarray, np.ndarray, float]] = []

    def draw(self) -> None:
        """All normal anatomy, in order."""
        self.body()
        self.lungs()
        self.heart()
        self.mediastinum()
        self.vessels()
        self.bronchial_tree()
        self.skeleton()
        self.extras()

    # -- body wall -----------------------------------------------------------------------------------------------
    def _indent(self, x: np.ndarray) -> np.ndarray:
        """Depth (mm) of the pectus excavatum dent of the anterior chest wall at lateral position ``x``."""
        if not self.pectus:
            return np.zeros_like(x)
        return self.pectus * np.clip(np.cos(np.pi * x / (2 * 55 * self.s)), 0, None) * (np.abs(x) < 55 * self.s)

    def body(self) -> None:
        g, T = self.grid, self.tissue
        x2, y2 = g.axes[0][:, None], g.axes[1][None, :]
        dent = self._indent(x2)

        def superellipse(ha: float, hb: float, cy: float = 0.0, p: float = 2.3) -> np.ndarray:
            inside = np.abs(x2 / ha) ** p + np.abs((y2 - cy) / hb) ** p < 1.0
            return inside & (y2 < cy + hb - dent)

        self.cavity2d = superellipse(self.A, self.B, self.cy, 2.0)
        self.body2d = superellipse(self.a, self.b)
        T[self.body2d] = _T["subcutaneous_fat"]
        T[superellipse(self.a - self.fat, self.b - self.fat)] = _T["muscle"]
        T[self.cavity2d] = _T["mediastinal_fat"]
        r2 = ((np.abs(x2) - 0.45 * self.A) / (0.6 * self.A)) ** 2 + ((y2 - self.cy) / self.B) ** 2
        depth = 45 * self.s
        self.dome = np.where(x2 > 0, self.z_dome_r, self.z_dome_l) - depth * np.minimum(r2, 1.2)
        below = self.cavity2d[:, :, None] & (g.Z < self.dome[:, :, None])
        T[below] = _T["abdomen"]
        T[below & (g.X > -0.25 * self.A)] = _T["liver"]
        if self.study["sex"] == "female":
            self._breasts()
        if self.study["arms"] == "down":
            self._arms()

    def _breasts(self) -> None:
        u, s = self.rng.uniform, self.s
        size = u(30, 60) * s
        z = self.z_carina - u(40, 70) * s
        for side in (1, -1):
            center = np.array([side * u(0.45, 0.6) * self.a, self.b - self.fat - 0.3 * size, z])
            found = ellipsoid(self.grid, center, (size, size * 0.8, size * 0.9))
            if found is not None:
                slices, inside = found
                sub = self.tissue[slices]
                sub[inside & ((sub == _T["air"]) | (sub == _T["subcutaneous_fat"]))] = _T["breast"]

    def _arms(self) -> None:
        """Arms down beside the chest: fat, muscle and the humerus, from the shoulders to below the diaphragm."""
        g, u, s = self.grid, self.rng.uniform, self.s
        for side in (1, -1):
            r_arm = u(40, 55) * s + 0.5 * self.fat
            cx, cy = side * (self.a + r_arm + u(2, 12)), self.cy + u(-15, 15)
            x2, y2 = g.axes[0][:, None], g.axes[1][None, :]
            d = np.sqrt((x2 - cx) ** 2 + ((y2 - cy) / 1.1) ** 2)
            z_ok = (g.Z < self.z_top + 40) & (g.Z > self.z_dome_l - 120)
            for radius, code in ((r_arm, "subcutaneous_fat"), (r_arm - 0.6 * self.fat - 4, "muscle"),
                                 (11 * s, "humerus"), (6 * s, "abdomen")):  # fmt: skip
                disc = (d < radius)[:, :, None] & z_ok
                if code == "subcutaneous_fat":  # the arm's outline: only where there is air (never into the trunk)
                    disc &= self.tissue == _T["air"]
                self.tissue[disc] = _T[code]

    # -- lungs and mediastinum -------------------------------------------------------------------------------------
    def lungs(self) -> None:
        g, T, u = self.grid, self.tissue, self.rng.uniform
        for side in (1, -1):
            xl, rxl = side * 0.42 * self.A, self.lung_width * self.A
            zl = self.z_dome_r if side > 0 else self.z_dome_l
            rz = self.z_top - zl
            lo = [min(0, side * self.A * 1.1), self.cy - self.B, zl - 100]
            hi = [max(0, side * self.A * 1.1), self.cy + self.B, self.z_top]
            slices, X, Y, Z = g.box(lo, hi)
            inside = ((X - xl) / rxl) ** 2 + ((Y - self.cy) / (1.2 * self.B)) ** 2 + ((Z - zl) / rz) ** 2 < 1.0
            inside &= self.cavity2d[slices[0], slices[1], None] & (side * X > 14 * self.s * u(0.9, 1.2))
            inside &= Z > self.dome[slices[0], slices[1], None]
            sub = T[slices]
            sub[inside & (sub == _T["mediastinal_fat"])] = _T["lung"]
        top = T[:, :, int(np.searchsorted(g.axes[2], self.z_top - 30 * self.s)) :]
        top[top == _T["mediastinal_fat"]] = _T["muscle"]
        self.lung_density = u(-880, -800)

    def heart(self) -> None:
        u, s = self.rng.uniform, self.s
        severity = self.rng.choice(["mild", "moderate", "severe"], p=[0.5, 0.35, 0.15])
        enlarged = {"mild": (1.18, 1.3), "moderate": (1.3, 1.45), "severe": (1.45, 1.65)}[str(severity)]
        scale = u(*enlarged) if self.labels["cardiomegaly"] else self.heart_size
        normal = np.array([56, 44, 48]) * s
        radii = normal * scale
        base = np.array([-0.16 * self.A, self.y_ant - normal[1] - 3 - self.pectus, self.z_dome_l + 0.55 * normal[2]])
        center = base + np.array([-0.6, -0.8, 0.6]) * (radii - normal)
        rot = rotation(np.deg2rad(u(18, 38)), np.deg2rad(u(8, 28)))
        self.heart_center, self.heart_radii, self.heart_rotation = center, radii, rot
        slices, inside = ellipsoid(self.grid, center, radii + 4.0, rot)
        sub = self.tissue[slices]
        sub[inside & self.cavity2d[slices[0], slices[1], None] & SOFT[sub]] = _T["mediastinal_fat"]
        slices, inside = ellipsoid(self.grid, center, radii, rot)
        self.tissue[slices][inside & self.cavity2d[slices[0], slices[1], None]] = _T["heart"]
        if self.labels["cardiomegaly"]:
            self.details["cardiomegaly"] = {"scale": round(float(scale), 3), "severity": str(severity)}

    def heart_surface(self, direction: np.ndarray, offset: float = 0.0) -> np.ndarray:
        """Point of the heart's surface (plus ``offset`` mm outwards) seen from its centre along ``direction``."""
        d = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
        q = self.heart_rotation.T @ d
        t = 1.0 / np.sqrt(np.sum((q / self.heart_radii) ** 2))
        return self.heart_center + (t + offset) * d

    def paint_distance(self, piece: tuple, radius: float, code: int, halo: int | None = None, where=None):
        """Paint voxels closer than ``radius`` to a centreline piece, after a 3 mm ``halo`` of another tissue."""
        kind, a, b = piece
        pad = radius + 3.0
        if kind == "arch":
            center, half = (a + b) / 2, float(np.linalg.norm(b - a)) / 2
            found = self.grid.box(center - half - pad, center + half + pad)
        else:
            found = self.grid.box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
        if found is None:
            return None
        slices, X, Y, Z = found
        dist = (arch_distance if kind == "arch" else segment_distance)(X, Y, Z, a, b)
        sub = self.tissue[slices]
        if halo is not None:
            sub[(dist < pad) & SOFT[sub]] = halo
        inside = dist < radius
        if where is not None:
            inside &= where[sub]
        sub[inside] = code
        return slices, inside

    def mediastinum(self) -> None:
        u, s = self.rng.uniform, self.s
        z_lo, z_hi = self.grid.axes[2][0] - 10, self.grid.axes[2][-1] + 10
        self.r_ao = u(10, 16) * s
        self.z_arch = self.z_carina + u(20, 30) * s
        asc0 = np.array([0.05 * self.A + 8 * s, self.heart_center[1] - 0.2 * self.heart_radii[1], self.heart_center[2]])
        asc1 = np.array([asc0[0], asc0[1] - 10 * s, self.z_arch])
        desc0 = np.array([-(0.6 * self.r_vb + self.r_ao + 2), self.y_vb + 0.6 * self.r_vb, self.z_arch])
        desc1 = np.array([desc0[0] - 4 * s, desc0[1], z_lo])
        self.aorta = (("segment", asc0, asc1), ("arch", asc1, desc0), ("segment", desc0, desc1))
        for piece in self.aorta:
            self.paint_distance(piece, self.r_ao, _T["aorta"], _T["mediastinal_fat"])
        # superior vena cava, right of the ascending aorta, into the right atrium
        self.svc = (np.array([asc0[0] + self.r_ao + 9 * s, asc0[1] - 4 * s, self.z_arch + 45 * s]),
                    np.array([asc0[0] + self.r_ao + 6 * s, asc0[1] - 8 * s, self.heart_center[2] + 0.3 * self.heart_radii[2]]))  # fmt: skip
        self.paint_distance(("segment", *self.svc), u(8, 11) * s, _T["svc"], where=SOFT)
        oes = ("segment", np.array([-6 * s, self.y_oes, z_lo]), np.array([-6 * s, self.y_oes, z_hi]))
        self.paint_distance(oes, 7 * s, _T["oesophagus"])
        carina = np.array([0.0, self.y_tr, self.z_carina])
        self.trachea = ("segment", carina, np.array([0.0, self.y_tr, z_hi]))
        self.r_tr = u(8, 10) * s
        self.paint_distance(self.trachea, self.r_tr + 2, _T["airway_wall"], _T["mediastinal_fat"])
        self.paint_distance(self.trachea, self.r_tr, _T["airway"])
        self.hila = {}
        for side, drop in ((1, 28), (-1, 22)):
            hilum = np.array([side * 42 * s, self.y_tr - 6 * s, self.z_carina - drop * s])
            self.hila[side] = hilum
            self.paint_distance(("segment", carina, hilum), 0.7 * self.r_tr + 2, _T["airway_wall"])
            self.paint_distance(("segment", carina, hilum), 0.7 * self.r_tr, _T["airway"])
        # a few normal-sized (< 10 mm) mediastinal lymph nodes
        for _ in range(int(self.rng.integers(0, 4))):
            center = carina + np.array([u(-25, 25), u(-8, 12), u(-30, 35)]) * s
            found = ellipsoid(self.grid, center, (u(2.5, 4.5),) * 3)
            if found is not None:
                sub = self.tissue[found[0]]
                sub[found[1] & (sub == _T["mediastinal_fat"])] = _T["lymph_node"]

    def _tree(self, directions, length: tuple[float, float], radius0: float, generations: int):
        """Branching centrelines from both hila: ``(start, end, radius)`` per segment."""
        rng, s = self.rng, self.s
        segments = []
        for side, hilum in self.hila.items():
            stack = []
            for direction in directions:
                d = np.array([side * direction[0], direction[1], direction[2]], dtype=float)
                stack.append((hilum, d / np.linalg.norm(d), 0))
            while stack:
                start, direction, generation = stack.pop()
                end = start + direction * rng.uniform(*length) * s * 0.8**generation
                segments.append((start, end, radius0 * s * 0.72**generation))
                if generation < generations:
                    for _ in range(2):
                        child = direction + rng.normal(0, 0.55, 3)
                        if generation == 0:
                            child[0] = side * abs(child[0])
                        stack.append((end, child / np.linalg.norm(child), generation + 1))
        return segments

    def vessels(self) -> None:
        """Pulmonary vessel trees: four generations of branching tubes from each hilum, drawn in lung only."""
        directions = ((1, 0, 0.9), (1, 0.4, -0.5), (1, -0.5, -0.6), (1, 0.7, 0.2), (0.9, -0.6, 0.5))
        segments = self._tree(directions, (30, 55), 4.5, 3)
        paint_tubes(self.tissue, self.grid, segments, _T["vessel"], lut([_T["lung"]]))

    def bronchial_tree(self) -> None:
        """Segmental and subsegmental bronchi (air lumen in a thin wall) beside the vessels; kept for findings."""
        directions = ((1, 0.1, 0.8), (1, 0.5, -0.4), (1, -0.4, -0.7), (1, 0.6, 0.3), (0.9, -0.7, 0.4))
        self.bronchi = self._tree(directions, (28, 50), 3.4, 2)
        where = lut([_T["lung"], _T["vessel"]])
        paint_tubes(self.tissue, self.grid, [(a, b, r + 1.2) for a, b, r in self.bronchi], _T["bronchus_wall"], where)
        paint_tubes(self.tissue, self.grid, self.bronchi, _T["airway"], lut([_T["bronchus_wall"]]))

    # -- skeleton ------------------------------------------------------------------------------------------------
    def skeleton(self) -> None:
        g, T, u, s = self.grid, self.tissue, self.rng.uniform, self.s
        x2, y2 = g.axes[0][:, None], g.axes[1][None, :]
        ar, br = self.A + 0.45 * self.wall, self.B + 0.45 * self.wall
        rho = np.sqrt((x2 / ar) ** 2 + ((y2 - self.cy) / br) ** 2)
        radial = (rho - 1.0) * (ar + br) / 2
        phi = np.arctan2((y2 - self.cy) / br, np.abs(x2) / ar)
        ring = (np.abs(radial) < 5.0 * s) & (phi > -np.pi / 2 + 0.3) & (phi < np.pi / 2 - 0.35)
        ii, jj = np.nonzero(ring)
        drop = 160 * s * (phi[ii, jj] + np.pi / 2) / np.pi
        spacing, first = u(25, 29) * s, self.z_top + 8 * s
        pos = (g.axes[2][None, :] + drop[:, None] - first) / spacing
        index = np.rint(pos)
        resid = (pos - index) * spacing
        in_rib = (resid / (5.0 * s)) ** 2 + (radial[ii, jj][:, None] / (3.8 * s)) ** 2 < 1.0
        in_rib &= (index <= 0) & (index > -13)
        rows, ks = np.nonzero(in_rib)
        T[ii[rows], jj[rows], ks] = _T["rib"]
        y_st = self.y_ant - self.pectus
        found = g.box([-14 * s, y_st + 1, self.z_dome_r - 10], [14 * s, y_st + 12 * s, g.axes[2][-1]])
        if found is not None:
            T[found[0]] = _T["sternum"]
        self._scapulae()
        # vertebral column; a scoliotic spine shifts laterally along a half sine wave
        z_rel = (g.axes[2] - g.axes[2][0]) / max(float(np.ptp(g.axes[2])), 1.0)
        offsets = np.rint(self.scoliosis * np.sin(np.pi * z_rel) / g.spacing[0]).astype(int)
        period, phase = u(25, 29) * s, u(0, 30)
        is_disc = np.mod(g.axes[2] - phase, period) < 5.5 * s
        for offset in np.unique(offsets):
            ks = np.nonzero(offsets == offset)[0]
            xs = x2 - offset * g.spacing[0]
            self._vertebra(xs, y2, ks, is_disc)

    def _vertebra(self, x2: np.ndarray, y2: np.ndarray, ks: np.ndarray, is_disc: np.ndarray) -> None:
        T, s = self.tissue, self.s
        r = np.sqrt(x2**2 + (y2 - self.y_vb) ** 2)
        halo, body, cortex = r < self.r_vb + 4, r < self.r_vb, (r < self.r_vb) & (r > self.r_vb - 2.5)
        rc = np.sqrt(x2**2 + (y2 - self.y_canal) ** 2)
        arch = (rc < 13 * s) & (y2 < self.y_canal + 2)
        arch |= (np.abs(x2) < 4 * s) & (y2 < self.y_canal) & (y2 > self.y_canal - 38 * s)
        arch |= (np.abs(x2) < 34 * s) & (np.abs(y2 - self.y_canal) < 4.5 * s)
        canal = rc < 7.5 * s
        sub = T[:, :, ks]
        paraspinal = sub[halo & ~body]
        paraspinal[np.isin(paraspinal, [_T["lung"], _T["vessel"], _T["bronchus_wall"], _T["airway"]])] = _T[
            "mediastinal_fat"
        ]
        sub[halo & ~body] = paraspinal
        sub[arch] = _T["vertebral_body"]
        sub[body] = _T["vertebral_body"]
        sub[cortex] = _T["cortical_bone"]
        sub[canal] = _T["spinal_canal"]
        discs = is_disc[ks]
        disc_slices = sub[:, :, discs]
        disc_slices[body] = _T["disc"]
        sub[:, :, discs] = disc_slices
        T[:, :, ks] = sub

    def _scapulae(self) -> None:
        """Thin curved bone plates behind the upper ribs."""
        g, u, s = self.grid, self.rng.uniform, self.s
        x2, y2 = g.axes[0][:, None], g.axes[1][None, :]
        for side in (1, -1):
            cx = side * u(0.45, 0.6) * self.A
            y_plate = -(self.b - self.fat) + 10 * s + 0.004 * (x2 - cx) ** 2  # follows the curve of the back
            plate = (np.abs(x2 - cx) < u(35, 45) * s) & (np.abs(y2 - y_plate) < 3.5 * s)
            z_ok = (g.Z < self.z_top + 10 * s) & (g.Z > self.z_top - u(110, 140) * s)
            region = plate[:, :, None] & z_ok
            self.tissue[region & np.take(SOFT, self.tissue)] = _T["scapula"]

    # -- variants and incidental findings ----------------------------------------------------------------------------
    def extras(self) -> None:
        u, s, st = self.rng.uniform, self.s, self.study
        if "azygos fissure" in st["variants"]:
            # a thin curved pleural sheet from the posterior chest wall towards the right upper mediastinum
            found = self.grid.box([5, self.cy - self.B, self.z_carina], [0.7 * self.A, self.y_tr + 10, self.z_top])
            if found is not None:
                slices, X, Y, Z = found
                target = 15 * s + 0.35 * (Y - self.cy + self.B) + 0.002 * (Z - self.z_carina) ** 2
                sub = self.tissue[slices]
                sub[(np.abs(X - target) < 0.75 * self.grid.spacing[0]) & (sub == _T["lung"])] = _T["fissure"]
        if "liver cyst" in st["incidental"]:
            liver = np.flatnonzero(self.tissue == _T["liver"])
            if len(liver):
                size = u(8, 22)
                center = self.grid.coords(liver[self.rng.integers(len(liver))][None])[0]
                found = ellipsoid(self.grid, center, (size,) * 3)
                if found is not None:
                    sub = self.tissue[found[0]]
                    sub[found[1] & (sub == _T["liver"])] = _T["liver_cyst"]
        if "vertebral osteophytes" in st["incidental"]:
            for _ in range(int(self.rng.integers(2, 6))):
                z = u(self.z_dome_r, self.z_top - 20)
                side = self.rng.choice([-1, 1])
                center = np.array([side * 0.8 * self.r_vb, self.y_vb + 0.6 * self.r_vb, z])
                found = ellipsoid(self.grid, center, (5 * s, 4 * s, 4 * s))
                if found is not None:
                    sub = self.tissue[found[0]]
                    sub[found[1] & SOFT[sub]] = _T["osteophyte"]
