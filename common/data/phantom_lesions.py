"""The 18 CT-RATE findings painted onto a phantom's anatomy, each with a size/severity distribution.

One method per finding of :data:`common.data.findings.FINDINGS`; each draws from ``self.rng`` (the findings stream),
changes tissue codes only (intensities come later), records what the report states in ``self.details[key]``, and sets
its label back to 0 when it finds no room (e.g. a consolidation whose lobes are all filled by effusion), so labels
always match the image. :data:`PAINT_ORDER` is the order in which they are drawn (later ones overwrite).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.data.findings import DEVICES, LOBES, STATIONS
from common.data.phantom_anatomy import LUNG_LIKE, SOFT, TISSUES, ChestAnatomy
from common.data.phantom_geometry import arch_distance, ellipsoid, lut, paint_tubes, segment_distance, smooth_field

__all__ = ["LOBES", "PAINT_ORDER", "SIDES", "ChestWithFindings"]

SIDES: tuple[str, ...] = ("left", "right", "bilateral")
PAINT_ORDER: tuple[str, ...] = (
    "emphysema", "mosaic_attenuation_pattern", "interlobular_septal_thickening", "pulmonary_fibrotic_sequela",
    "bronchiectasis", "peribronchial_thickening", "lung_opacity", "pleural_effusion", "atelectasis", "consolidation",
    "lung_nodule", "pericardial_effusion", "coronary_artery_wall_calcification", "arterial_wall_calcification",
    "lymphadenopathy", "hiatal_hernia", "medical_material",
)  # fmt: skip
_T = TISSUES
_LOWER = (2, 4)  # lower lobes
_ALL_SOLID = lut([c for c in range(256) if c not in (_T["air"],)])


def _severity(value: float, cuts: Sequence[float]) -> str:
    return ("mild", "moderate", "severe")[int(np.searchsorted(cuts, value))]


class ChestWithFindings(ChestAnatomy):
    """:class:`ChestAnatomy` plus one painter per finding (call :meth:`paint_findings` after :meth:`draw`)."""

    def paint_findings(self) -> None:
        # cardiomegaly is drawn with the heart (an anatomy step), the others here
        for key in PAINT_ORDER:
            if self.labels[key]:
                getattr(self, key)()

    # -- helpers ------------------------------------------------------------------------------------------------
    def lobe_of(self, xyz: np.ndarray) -> np.ndarray:
        """Lobe index (into :data:`LOBES`) of patient coordinates ``(..., 3)``: planar oblique/horizontal fissures."""
        x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
        lower = z < self.z_hilum + 0.85 * (self.y_hilum - y)
        right = x > 0
        middle = right & ~lower & (z < self.z_hilum + 8 * self.s)
        return np.where(right, np.where(lower, 2, np.where(middle, 1, 0)), np.where(lower, 4, 3))

    def _lobe_map(self, slices: tuple) -> np.ndarray:
        x, y, z = (self.grid.axes[i][slices[i]] for i in range(3))
        xyz = np.stack(np.broadcast_arrays(x[:, None, None], y[None, :, None], z[None, None, :]), -1)
        return self.lobe_of(xyz)

    def _pick(self, candidates: np.ndarray) -> np.ndarray:
        return self.grid.coords(candidates[self.rng.integers(len(candidates))][None])[0]

    def _lobe_candidates(self, lobe: int, table: np.ndarray = LUNG_LIKE) -> np.ndarray:
        flat = np.flatnonzero(np.take(table, self.tissue))
        return flat[self.lobe_of(self.grid.coords(flat)) == lobe]

    def _side_of(self, lobes: Sequence[str]) -> str:
        sides = {lobe.split()[0] for lobe in lobes}
        return sides.pop() if len(sides) == 1 else "bilateral"

    def _zone(self, zone: str, sides: Sequence[int]) -> np.ndarray:
        """Boolean ``(X, Y, Z)`` of the named lung zone (``upper``, ``lower``, ``apical``, ``basal``, ``diffuse``)."""
        g = self.grid
        z_lo = min(self.z_dome_r, self.z_dome_l)
        height = self.z_top - z_lo
        z_range = {"upper": (z_lo + 0.5 * height, 1e9), "apical": (self.z_top - 0.3 * height, 1e9),
                   "lower": (-1e9, z_lo + 0.5 * height), "basal": (-1e9, z_lo + 0.3 * height),
                   "diffuse": (-1e9, 1e9)}[zone]  # fmt: skip
        zmask = (g.axes[2] >= z_range[0]) & (g.axes[2] < z_range[1])
        xmask = np.zeros(len(g.axes[0]), dtype=bool)
        for side in sides:
            xmask |= side * g.axes[0] > 0
        return xmask[:, None, None] & np.ones(len(g.axes[1]), bool)[None, :, None] & zmask[None, None, :]

    def _draw_side(self) -> tuple[str, tuple[int, ...]]:
        name = str(self.rng.choice(SIDES, p=[0.2, 0.2, 0.6]))
        return name, {"left": (-1,), "right": (1,), "bilateral": (1, -1)}[name]

    def _subpleural(self, region: np.ndarray, depth_mm: float) -> np.ndarray:
        """Voxels of ``region`` (lung) within ``depth_mm`` of non-lung tissue, computed on its bounding box."""
        from scipy.ndimage import distance_transform_edt

        idx = np.nonzero(region)
        if len(idx[0]) == 0:
            return region
        box = tuple(slice(max(int(i.min()) - 2, 0), int(i.max()) + 3) for i in idx)
        lung = np.take(LUNG_LIKE, self.tissue[box])
        dist = distance_transform_edt(lung, sampling=self.grid.spacing)
        out = np.zeros_like(region)
        out[box] = region[box] & (dist < depth_mm)
        return out

    # -- lung parenchyma ---------------------------------------------------------------------------------------------
    def emphysema(self) -> None:
        u, T = self.rng.uniform, self.tissue
        kind = str(self.rng.choice(["centrilobular", "paraseptal", "panlobular"], p=[0.65, 0.2, 0.15]))
        extent = u(0.2, 1.0)
        zone = "diffuse" if kind == "panlobular" or extent > 0.75 else "upper"
        region = self._zone(zone if kind != "panlobular" else "lower", (1, -1)) & (T == _T["lung"])
        if kind == "paraseptal":
            region = self._subpleural(region, 12 + 10 * extent)
        elif kind == "centrilobular":
            field = smooth_field(T.shape, self.grid.spacing, 6.0, self.rng)
            region &= field > np.quantile(field, 1 - 0.35 - 0.55 * extent)
        T[region] = _T["emphysema"]
        candidates = np.flatnonzero(T == _T["emphysema"])
        if len(candidates) < 10:
            self.labels["emphysema"] = 0
            return
        n_bullae = int(self.rng.integers(0, 3 + int(6 * extent)))
        for _ in range(n_bullae):
            radius = u(5, 14 if kind == "paraseptal" else 10) * self.s
            found = ellipsoid(self.grid, self._pick(candidates), (radius,) * 3)
            if found is not None:
                part = T[found[0]]
                part[found[1] & ((part == _T["emphysema"]) | (part == _T["vessel"]) | (part == _T["lung"]))] = _T[
                    "bulla"
                ]
        self.details["emphysema"] = {"kind": kind, "zone": zone, "bullae": n_bullae,
                                     "severity": _severity(extent, (0.45, 0.75))}  # fmt: skip

    def mosaic_attenuation_pattern(self) -> None:
        zone = "diffuse" if self.rng.random() < 0.6 else "lower"
        region = self._zone(zone, (1, -1)) & (self.tissue == _T["lung"])
        field = smooth_field(self.tissue.shape, self.grid.spacing, self.rng.uniform(9, 14), self.rng)
        low = region & (field < np.quantile(field, self.rng.uniform(0.35, 0.55)))
        if low.sum() < 50:
            self.labels["mosaic_attenuation_pattern"] = 0
            return
        self.tissue[low] = _T["mosaic_low"]
        self.details["mosaic_attenuation_pattern"] = {"side": "bilateral", "zone": zone}

    def interlobular_septal_thickening(self) -> None:
        g, u = self.grid, self.rng.uniform
        side_name, sides = self._draw_side()
        zone = "basal" if self.rng.random() < 0.6 else "diffuse"
        region = self._subpleural(self._zone(zone, sides) & np.take(LUNG_LIKE, self.tissue), u(20, 35))
        # irregular polygonal network of septa ~1-2 cm apart: the zero level set of a random field, one voxel thick
        # (the septum's partial volume is in its HU, TISSUE_HU["septal_line"])
        field = smooth_field(self.tissue.shape, g.spacing, u(5.0, 8.0), self.rng)
        lines = np.abs(field) < u(0.12, 0.2)
        septa = region & lines & (self.tissue != _T["vessel"])
        if septa.sum() < 30:
            self.labels["interlobular_septal_thickening"] = 0
            return
        self.tissue[septa] = _T["septal_line"]
        self.details["interlobular_septal_thickening"] = {"side": side_name, "zone": zone}

    def pulmonary_fibrotic_sequela(self) -> None:
        u = self.rng.uniform
        side_name, sides = self._draw_side()
        zone = "apical" if self.rng.random() < 0.75 else "basal"
        region = self._subpleural(self._zone(zone, sides) & np.take(LUNG_LIKE, self.tissue), u(8, 18))
        field = smooth_field(self.tissue.shape, self.grid.spacing, 3.0, self.rng)
        band = self._subpleural(region, 3.5) | (region & (field > u(0.2, 0.8)))  # pleural thickening + strands
        if band.sum() < 20:
            self.labels["pulmonary_fibrotic_sequela"] = 0
            return
        self.tissue[band] = _T["fibrosis"]
        self.details["pulmonary_fibrotic_sequela"] = {"side": side_name, "zone": zone}

    def _bronchi_in(self, lobes: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray, float]]:
        mids = np.array([(a + b) / 2 for a, b, _ in self.bronchi])
        inside = np.isin(self.lobe_of(mids), lobes)
        return [seg for seg, ok in zip(self.bronchi, inside) if ok]

    def bronchiectasis(self) -> None:
        u = self.rng.uniform
        order = [*self.rng.permutation(list(_LOWER)), *self.rng.permutation([0, 1, 3])]
        kind = "varicose" if self.rng.random() < 0.25 else "cylindrical"
        for lobe in order:
            segments = self._bronchi_in([int(lobe)])
            if not segments:
                continue
            factor = u(1.8, 2.6)
            lumen = []
            for a, b, r in segments:
                if kind == "cylindrical":
                    lumen.append((a, b, max(r * factor, 2.5)))
                else:  # beads along the segment
                    for t0, t1, w in ((0.0, 0.33, 1.0), (0.33, 0.66, 0.6), (0.66, 1.0, 1.0)):
                        lumen.append((a + t0 * (b - a), a + t1 * (b - a), max(r * factor * w, 2.0)))
            where = lut([_T[k] for k in ("lung", "vessel", "bronchus_wall", "airway", "emphysema", "mosaic_low")])
            wall = [(a, b, r + u(1.5, 2.5)) for a, b, r in lumen]
            painted = paint_tubes(self.tissue, self.grid, wall, _T["ectatic_wall"], where)
            paint_tubes(self.tissue, self.grid, lumen, _T["ectatic_lumen"], lut([_T["ectatic_wall"]]))
            if len(painted) < 10:
                continue
            self.details["bronchiectasis"] = {"lobe": LOBES[int(lobe)], "kind": kind}
            return
        self.labels["bronchiectasis"] = 0

    def peribronchial_thickening(self) -> None:
        u = self.rng.uniform
        zone = "lower" if self.rng.random() < 0.6 else "diffuse"
        segments = self._bronchi_in(list(_LOWER) if zone == "lower" else [0, 1, 2, 3, 4])
        thick = u(2.5, 4.5)
        where = lut([_T[k] for k in ("lung", "vessel", "bronchus_wall", "emphysema", "mosaic_low")])
        painted = paint_tubes(self.tissue, self.grid, [(a, b, r + thick) for a, b, r in segments],
                              _T["thick_bronchial_wall"], where)  # fmt: skip
        paint_tubes(self.tissue, self.grid, segments, _T["airway"], lut([_T["thick_bronchial_wall"]]))
        if len(painted) < 10:
            self.labels["peribronchial_thickening"] = 0
            return
        self.details["peribronchial_thickening"] = {"side": "bilateral", "zone": zone}

    def lung_opacity(self) -> None:
        u = self.rng.uniform
        n_lobes = int(self.rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
        lobes = []
        for lobe in self.rng.permutation(len(LOBES))[:n_lobes]:
            candidates = self._lobe_candidates(int(lobe))
            if len(candidates) < 100:
                continue
            painted = 0
            for _ in range(int(self.rng.integers(1, 4))):
                radius = u(15, 40) * self.s
                center = self._pick(candidates)
                found = ellipsoid(self.grid, center, (radius, radius * u(0.7, 1.2), radius * u(0.8, 1.4)))
                if found is None:
                    continue
                slices, inside = found
                sub = self.tissue[slices]
                field = smooth_field(sub.shape, self.grid.spacing, 5.0, self.rng)
                region = inside & (field > -0.6) & np.isin(sub, [_T["lung"], _T["emphysema"], _T["mosaic_low"]])
                region &= self._lobe_map(slices) == lobe
                sub[region] = _T["ground_glass"]
                painted += int(region.sum())
            if painted > 20:
                lobes.append(LOBES[int(lobe)])
        if not lobes:
            self.labels["lung_opacity"] = 0
            return
        self.details["lung_opacity"] = {"lobes": lobes, "side": self._side_of(lobes), "kind": "ground-glass"}

    def pleural_effusion(self) -> None:
        g, u, T = self.grid, self.rng.uniform, self.tissue
        side_name, sides = self._draw_side()
        amount = u(0, 1)
        for side in sides:
            depth_mm, height = (15 + 55 * amount) * self.s, (40 + 90 * amount) * self.s
            z_limit = (self.z_dome_r if side > 0 else self.z_dome_l) + height
            midline = int(np.searchsorted(g.axes[0], 0))
            half = slice(midline, None) if side > 0 else slice(0, midline)
            x = g.axes[0][half]
            floor = self.cy - self.B * np.sqrt(np.clip(1 - (x / self.A) ** 2, 0, 1))
            depth = depth_mm * np.clip((z_limit - g.axes[2]) / 40.0, 0, 1)
            level = floor[:, None, None] + depth[None, None, :]
            sub = T[half]
            sub[(g.Y < level) & (np.take(LUNG_LIKE, sub) | (sub == _T["airway"]))] = _T["effusion"]
        self.details["pleural_effusion"] = {"side": side_name, "severity": _severity(amount, (0.4, 0.75))}

    def atelectasis(self) -> None:
        g, u = self.grid, self.rng.uniform
        kind = str(self.rng.choice(["subsegmental", "passive", "lobar"], p=[0.5, 0.35, 0.15]))
        order = [*self.rng.permutation(list(_LOWER)), *self.rng.permutation([0, 1, 3])]
        lung = np.take(LUNG_LIKE, self.tissue)
        for lobe in order:
            candidates = self._lobe_candidates(int(lobe))
            if len(candidates) < 100:
                continue
            if kind == "passive":
                # dependent band: the first few mm of aerated lung above the posterior pleura (or the fluid)
                region = lung & (self._zone("lower", (1 if lobe < 3 else -1,)))
                first = np.argmax(region, axis=1)
                has = region.any(axis=1)
                j = np.arange(region.shape[1])[None, :, None]
                band = region & has[:, None, :] & (j < first[:, None, :] + u(10, 22) / g.spacing[1])
            elif kind == "lobar":
                side = 1 if lobe < 3 else -1
                hilum = self.hila[side]
                coords = self.grid.coords(candidates)
                near = candidates[np.argsort(np.linalg.norm(coords - hilum, axis=1))[: max(len(candidates) // 2, 1)]]
                band = np.zeros_like(lung)
                band.ravel()[near] = True
            else:  # plate-like band a few mm thick, roughly horizontal (at least one slice thick)
                center = self._pick(candidates)
                slices, X, Y, Z = g.box(center - 50, center + 50)
                extent = ((X - center[0]) / u(25, 45)) ** 2 + ((Y - center[1]) / u(20, 35)) ** 2 < 1.0
                half = max(u(2.0, 3.5), 0.55 * g.spacing[2])
                plate = np.abs(Z - center[2] - 0.15 * (Y - center[1])) < half
                band = np.zeros_like(lung)
                band[slices] = extent & plate & lung[slices]
            band &= self._in_lobe(int(lobe))
            if band.sum() * np.prod(g.spacing) < 500:  # < 0.5 ml: nothing to see
                continue
            self.tissue[band] = _T["atelectasis"]
            self.details["atelectasis"] = {"lobe": LOBES[int(lobe)], "kind": kind}
            return
        self.labels["atelectasis"] = 0

    def _in_lobe(self, lobe: int) -> np.ndarray:
        g = self.grid
        xyz = np.stack(np.broadcast_arrays(g.X, g.Y, g.Z), -1)
        return self.lobe_of(xyz) == lobe

    def consolidation(self) -> None:
        u = self.rng.uniform
        for lobe in self.rng.permutation(len(LOBES)):
            candidates = self._lobe_candidates(int(lobe), lut([*np.flatnonzero(LUNG_LIKE), _T["ground_glass"]]))
            if len(candidates) < 200:
                continue
            for _ in range(5):
                radius = u(22, 48) * self.s
                found = ellipsoid(self.grid, self._pick(candidates), (radius, radius, 1.2 * radius))
                slices, inside = found
                sub = self.tissue[slices]
                allowed = np.take(LUNG_LIKE, sub) | (sub == _T["ground_glass"])
                region = inside & allowed & (self._lobe_map(slices) == lobe)
                volume_ml = float(region.sum() * np.prod(self.grid.spacing)) / 1000
                if volume_ml >= 10:
                    sub[region] = _T["consolidation"]
                    bronchogram = bool(self.rng.random() < 0.5)
                    if bronchogram:  # aerated bronchi stay visible inside the dense lung
                        paint_tubes(self.tissue, self.grid, self._bronchi_in([int(lobe)]), _T["airway"],
                                    lut([_T["consolidation"]]))  # fmt: skip
                    self.details["consolidation"] = {"lobe": LOBES[int(lobe)], "volume_ml": round(volume_ml, 1),
                                                     "air_bronchogram": bronchogram}  # fmt: skip
                    return
        self.labels["consolidation"] = 0

    def lung_nodule(self) -> None:
        count = int(self.rng.choice([1, 2, 3], p=[0.65, 0.22, 0.13]))
        drawn = []
        for _ in range(count):
            diameter = float(np.clip(np.exp(self.rng.normal(np.log(8.0), 0.55)), 3.0, 30.0))
            solid = self.rng.random() < 0.8
            placed = self._place_nodule(diameter, _T["nodule"] if solid else _T["subsolid_nodule"])
            if placed is not None:
                drawn.append((diameter, placed, solid))
        if not drawn:
            self.labels["lung_nodule"] = 0
            return
        diameter, (lobe, center), solid = max(drawn, key=lambda d: d[0])
        self.details["lung_nodule"] = {"lobe": LOBES[lobe], "size": int(round(diameter)), "count": len(drawn),
                                       "kind": "solid" if solid else "subsolid",
                                       "center_mm": [round(float(c), 1) for c in center]}  # fmt: skip

    def _place_nodule(self, diameter: float, code: int):
        u = self.rng.uniform
        radius = diameter / 2
        ratios = u(0.85, 1.15, size=3)
        for lobe in self.rng.permutation(len(LOBES)):
            candidates = self._lobe_candidates(int(lobe), lut([_T["lung"], _T["emphysema"], _T["vessel"]]))
            if len(candidates) == 0:
                continue
            for _ in range(20):
                center = self._pick(candidates)
                found = ellipsoid(self.grid, center, (radius + 4,) * 3)
                slices, margin = found
                if margin.sum() == 0 or np.take(LUNG_LIKE, self.tissue[slices][margin]).mean() < 0.97:
                    continue
                found = ellipsoid(self.grid, center, np.maximum(radius * ratios, 0.5 * min(self.grid.spacing)))
                slices, inside = found
                if inside.sum() == 0:
                    continue
                self.tissue[slices][inside] = code
                return int(lobe), center
        return None

    # -- heart, vessels, mediastinum ---------------------------------------------------------------------------------
    def pericardial_effusion(self) -> None:
        thickness = float(np.clip(np.exp(self.rng.normal(np.log(7.0), 0.45)), 4.0, 30.0))
        found = ellipsoid(self.grid, self.heart_center, self.heart_radii + thickness, self.heart_rotation)
        slices, outer = found
        sub = self.tissue[slices]
        shell = outer & (SOFT[sub] | np.take(LUNG_LIKE, sub)) & (sub != _T["heart"]) & (sub != _T["aorta"])
        shell &= self.cavity2d[slices[0], slices[1], None]
        sub[shell] = _T["pericardial_fluid"]
        self.details["pericardial_effusion"] = {"thickness_mm": int(round(thickness)),
                                                "severity": _severity(thickness, (10, 20))}  # fmt: skip

    def coronary_artery_wall_calcification(self) -> None:
        u = self.rng.uniform
        paths = {  # surface directions (patient frame) from the heart's centre, start -> end of each artery
            "left anterior descending": (np.array([-0.1, 1.0, 0.5]), np.array([-0.8, 0.6, -0.4])),
            "circumflex": (np.array([-0.5, 0.1, 0.8]), np.array([-0.9, -0.6, 0.0])),
            "right coronary": (np.array([0.7, 0.6, 0.4]), np.array([0.6, -0.3, -0.7])),
        }
        n_vessels = int(self.rng.choice([1, 2, 3], p=[0.45, 0.3, 0.25]))
        names = [list(paths)[i] for i in sorted(self.rng.permutation(3)[:n_vessels])]
        burden = 0
        for name in names:
            start, end = paths[name]
            for t in np.sort(u(0, 0.8, size=int(self.rng.integers(2, 7)))):
                point = self.heart_surface(start + t * (end - start), offset=u(1.0, 3.0))
                found = ellipsoid(self.grid, point, (u(1.5, 3.5),) * 3)
                if found is None:
                    continue
                sub = self.tissue[found[0]]
                region = found[1] & (SOFT[sub] | (sub == _T["pericardial_fluid"]))
                if not region.any():  # spot smaller than a voxel: paint its nearest voxel
                    idx = self.grid.index(point[None])[0]
                    if np.all((idx >= 0) & (idx < self.grid.shape)):
                        self.tissue[tuple(idx)] = _T["coronary_calcification"]
                        burden += 1
                    continue
                sub[region] = _T["coronary_calcification"]
                burden += int(region.sum())
        if burden == 0:
            self.labels["coronary_artery_wall_calcification"] = 0
            return
        severity = "severe" if n_vessels == 3 else ("moderate" if n_vessels == 2 else "mild")
        self.details["coronary_artery_wall_calcification"] = {"vessels": names, "severity": severity}

    def arterial_wall_calcification(self) -> None:
        u, T = self.rng.uniform, self.tissue
        (_, asc0, asc1), _, (_, desc0, desc1) = self.aorta
        desc1 = np.array([desc1[0], desc1[1], max(desc1[2], self.z_dome_l - 40)])
        pieces = (("segment", asc0, asc1), ("arch", asc1, desc0), ("segment", desc0, desc1))
        lengths = np.array([np.linalg.norm(asc1 - asc0), np.pi * np.linalg.norm(desc0 - asc1) / 2,
                            np.linalg.norm(desc1 - desc0)])  # fmt: skip
        n_plaques = int(np.clip(np.exp(self.rng.normal(np.log(6), 0.6)), 1, 20))
        painted = 0
        for _ in range(n_plaques):
            kind, a, b = pieces[int(self.rng.choice(3, p=lengths / lengths.sum()))]
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
            size = u(5, 13) * self.s
            center = point + normal * self.r_ao
            found = self.grid.box(center - size, center + size)
            if found is None:
                continue
            slices, X, Y, Z = found
            near = (X - center[0]) ** 2 + (Y - center[1]) ** 2 + (Z - center[2]) ** 2 < size**2
            dist = (arch_distance if kind == "arch" else segment_distance)(X, Y, Z, a, b)
            sub = T[slices]
            plaque = near & (dist > self.r_ao - 4.5) & (dist < self.r_ao + 1.0) & SOFT[sub]
            sub[plaque] = _T["calcification"]
            painted += int(plaque.sum())
        if painted == 0:
            self.labels["arterial_wall_calcification"] = 0
            return
        self.details["arterial_wall_calcification"] = {"plaques": n_plaques,
                                                       "severity": _severity(n_plaques, (5, 10))}  # fmt: skip

    def _station_centres(self, radius: float) -> dict[str, np.ndarray]:
        s, carina = self.s, np.array([0.0, self.y_tr, self.z_carina])
        asc1 = self.aorta[0][2]
        return {
            "right paratracheal": carina + np.array([self.r_tr + 4 + radius, 2.0, 25 * s]),
            "left paratracheal": carina + np.array([-(self.r_tr + 4 + radius), 2.0, 20 * s]),
            "subcarinal": carina + np.array([0.0, -4.0, -(10 * s + radius)]),
            "right hilar": self.hila[1] + np.array([6.0, 4.0, -8.0]),
            "left hilar": self.hila[-1] + np.array([-6.0, 4.0, -8.0]),
            "prevascular": np.array([0.0, asc1[1] + self.r_ao + radius + 2, self.z_arch - 10 * s]),
            "aortopulmonary window": np.array([-15 * s, self.y_tr + 4, self.z_arch - self.r_ao - radius]),
        }

    def lymphadenopathy(self) -> None:
        u = self.rng.uniform
        n = int(self.rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
        short_axis = float(np.clip(np.exp(self.rng.normal(np.log(15.0), 0.25)), 10.5, 35.0))
        radius = short_axis / 2
        centres = self._station_centres(radius)
        stations = [STATIONS[i] for i in sorted(self.rng.permutation(len(STATIONS))[:n])]
        allowed = lut([_T[k] for k in ("mediastinal_fat", "lung", "vessel", "emphysema", "lymph_node", "muscle",
                                       "bronchus_wall", "mosaic_low")])  # fmt: skip
        painted = []
        for station in stations:
            r = radius * u(0.8, 1.0)
            found = ellipsoid(self.grid, centres[station], (r, r * u(1.0, 1.3), r * u(1.1, 1.5)))
            if found is None:
                continue
            sub = self.tissue[found[0]]
            region = found[1] & allowed[sub]
            if region.sum() * np.prod(self.grid.spacing) > 300:
                sub[region] = _T["enlarged_node"]
                painted.append(station)
        if not painted:
            self.labels["lymphadenopathy"] = 0
            return
        self.details["lymphadenopathy"] = {"stations": painted, "size": int(round(short_axis))}

    def hiatal_hernia(self) -> None:
        u, s = self.rng.uniform, self.s
        size = float(np.clip(np.exp(self.rng.normal(np.log(40.0), 0.35)), 20.0, 90.0))
        r = size / 2
        center = np.array([-12 * s, self.y_oes + 4 + 0.5 * r, self.z_dome_l + 0.4 * r])
        radii = np.array([r * 1.1, r, r * 0.9])
        found = self.grid.box(center - radii, center + radii)
        if found is None:
            self.labels["hiatal_hernia"] = 0
            return
        slices, X, Y, Z = found

        def inside(shrink: float) -> np.ndarray:
            rx, ry, rz = np.maximum(radii - shrink, 1.0)
            return ((X - center[0]) / rx) ** 2 + ((Y - center[1]) / ry) ** 2 + ((Z - center[2]) / rz) ** 2 < 1.0

        allowed = lut([_T[k] for k in ("mediastinal_fat", "lung", "vessel", "oesophagus", "emphysema", "abdomen",
                                       "liver", "bronchus_wall", "mosaic_low", "airway", "heart", "muscle",
                                       "pericardial_fluid", "lymph_node")])  # fmt: skip
        sub = self.tissue[slices]
        region = inside(0.0) & allowed[sub]
        if not region.any():
            self.labels["hiatal_hernia"] = 0
            return
        level = center[2] + u(-0.3, 0.5) * r  # air-fluid level
        core = inside(3.0) & region
        sub[region] = _T["hernia_wall"]
        sub[core & (Z >= level)] = _T["hernia_air"]
        sub[core & (Z < level)] = _T["hernia_content"]
        self.details["hiatal_hernia"] = {"size": int(round(size)), "severity": _severity(size, (35, 60))}

    def medical_material(self) -> None:
        u, s = self.rng.uniform, self.s
        options = list(DEVICES)
        first = str(self.rng.choice(options, p=[0.3, 0.25, 0.2, 0.15, 0.1]))
        devices = [first]
        if self.rng.random() < 0.2:
            second = str(self.rng.choice([o for o in options if o != first]))
            devices.append(second)
        side = "left" if self.rng.random() < 0.7 else "right"
        sgn = 1 if side == "right" else -1
        everywhere = _ALL_SOLID
        svc_top, svc_bottom = self.svc
        ra = self.heart_surface(np.array([0.9, -0.1, -0.2]), offset=-12.0)  # right atrium
        rv = self.heart_surface(np.array([-0.2, 0.8, -0.6]), offset=-10.0)  # right ventricular apex
        chest_wall = np.array([sgn * 0.55 * self.a, self.b - 0.5 * self.fat - 6, self.z_top - 35 * s])
        subclavian = np.array([sgn * 35 * s, self.y_tr + 15, self.z_top - 5 * s])
        metal, plastic = TISSUES["device_metal"], TISSUES["device_plastic"]
        for device in devices:
            if device == "pacemaker":
                found = ellipsoid(self.grid, chest_wall, (24 * s, 4.5, 20 * s))
                if found is not None:
                    self.tissue[found[0]][found[1]] = metal
                lead = [chest_wall, subclavian, svc_top, svc_bottom, ra]
                tubes = [(a, b, 1.6) for a, b in zip(lead[:-1], lead[1:])] + [(ra, rv, 1.6)]
                paint_tubes(self.tissue, self.grid, tubes, metal, everywhere)
            elif device in ("central venous catheter", "port catheter"):
                if device == "port catheter":
                    found = ellipsoid(self.grid, chest_wall, (14.0, 6.0, 14.0))
                    if found is not None:
                        self.tissue[found[0]][found[1]] = metal
                    start = chest_wall
                else:
                    start = np.array([sgn * 30 * s, self.y_tr + 20, self.grid.axes[2][-1] + 5])
                tip = svc_bottom + u(-0.2, 0.3) * (ra - svc_bottom)
                line = [start, subclavian, svc_top, tip]
                paint_tubes(self.tissue, self.grid, [(a, b, 1.7) for a, b in zip(line[:-1], line[1:])], plastic,
                            everywhere)  # fmt: skip
            elif device == "sternotomy wires":
                y_st = self.y_ant - self.pectus + 6 * s
                for z in np.linspace(self.z_dome_r + 10, self.z_carina + 30, int(self.rng.integers(4, 8))):
                    loop = [np.array([-18 * s, y_st - 4, z]), np.array([-18 * s, y_st + 8, z]),
                            np.array([18 * s, y_st + 8, z]), np.array([18 * s, y_st - 4, z])]  # fmt: skip
                    paint_tubes(self.tissue, self.grid, [(a, b, 1.2) for a, b in zip(loop[:-1], loop[1:])], metal,
                                everywhere)  # fmt: skip
            else:  # endotracheal tube: a plastic ring inside the trachea with a radio-opaque line
                _, carina, top = self.trachea
                tip = carina + np.array([0, 0, u(30, 60)])
                lo, hi = [-self.r_tr, self.y_tr - self.r_tr, tip[2]], [self.r_tr, self.y_tr + self.r_tr, top[2]]
                found = self.grid.box(lo, hi)
                if found is not None:
                    slices, X, Y, Z = found
                    r = np.broadcast_to(np.sqrt(X**2 + (Y - self.y_tr) ** 2), self.tissue[slices].shape)
                    sub = self.tissue[slices]
                    sub[(r > self.r_tr - 3.5) & (r < self.r_tr - 1.0) & (sub == _T["airway"])] = plastic
        self.details["medical_material"] = {"devices": devices, "side": side}
