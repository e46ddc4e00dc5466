"""Which phantom findings are visible at a given voxel size: counterfactual twins, resampled, compared with noise.

For each finding and case, the phantom is generated twice with the same anatomy, intensities and noise (separate
random streams), once with the finding alone and once without any. Both are resampled to isotropic ``spacing_mm``
voxels (linear interpolation after a Gaussian pre-filter matching the voxel size, as a scanner's thicker
reconstruction would), clipped to the bundles' HU window, and subtracted: the difference is noise-free, so it is
compared with the noise the resampled image itself has (the study's noise level, scaled by the square root of the
voxel-volume ratio when the target voxel is larger). Two fractions of cases per finding and voxel size:

* **detectable**: at least ``min_voxels`` voxels differ by more than ``k_sigma`` noise standard deviations;
* **resolved**: at least ``min_voxels`` voxels keep half of the lesion's own contrast (the median difference inside
  its mask at the native grid) and exceed the noise: the lesion fills voxels rather than being averaged away.

The same is measured on the DRR (radiograph) at ``film_px`` pixels (pixel noise estimated from neighbouring pixels).

    python scripts/phantom_visibility.py run --num_cases 12 --spacings 8,2 --out_json visibility.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.data.findings import FINDINGS
from common.data.phantom import make_phantom, project_radiograph


def _resample(hu: np.ndarray, spacing: tuple[float, ...], target: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter, zoom

    sigma = [max(target / s - 1.0, 0.0) / 2.355 for s in spacing]  # extra blur to the target voxel's FWHM
    smooth = gaussian_filter(hu.astype(np.float32), sigma, mode="nearest")
    return zoom(smooth, [s / target for s in spacing], order=1, mode="nearest")


def _visible(difference: np.ndarray, threshold: float, min_voxels: int) -> bool:
    return int((np.abs(difference) > threshold).sum()) >= min_voxels


def run(
    num_cases: int = 12,
    spacings: str | tuple = "8,2",
    film_px: int = 224,
    k_sigma: float = 3.0,
    min_voxels: int = 2,
    hu_window: tuple[float, float] = (-1000.0, 1000.0),
    seed: int = 11,
    out_json: str | None = None,
) -> dict:
    """Fraction of cases in which each finding is visible at each voxel size and on the radiograph.

    Args:
        num_cases: twin pairs per finding.
        spacings: comma-separated isotropic voxel sizes in mm.
        film_px: side of the radiograph in pixels.
        k_sigma: a voxel differs when ``|difference| > k_sigma * noise_sd``.
        min_voxels: voxels (pixels) that must differ for the finding to count as visible.
        hu_window: HU clipping before comparison (the bundles' window).
        seed: phantom seed (cases of the ``validation`` split).
        out_json: where to write the table.

    Returns:
        ``{"visible_fraction": {finding_key: {"<s> mm detectable": fraction, "<s> mm resolved": ..., ...}}}``.
    """
    sizes = [float(s) for s in (spacings.split(",") if isinstance(spacings, str) else spacings)]
    keys = [f.key for f in FINDINGS]
    table: dict[str, dict[str, float]] = {}
    for key in keys:
        names = [f"{s:g} mm" for s in sizes] + ["radiograph"]
        hits = {f"{name} {kind}": 0 for name in names for kind in ("detectable", "resolved")}
        placed = 0
        for index in range(num_cases):
            positive = make_phantom(seed, "validation", index, labels={k: int(k == key) for k in keys})
            if not positive.labels[key]:
                continue
            placed += 1
            negative = make_phantom(seed, "validation", index, labels={k: 0 for k in keys})
            noise = float(positive.study["noise_hu"])
            voxel = float(np.prod(positive.spacing))
            clipped = [np.clip(p.hu.astype(np.float32), *hu_window) for p in (positive, negative)]
            lesion = positive.mask > 0
            contrast = float(np.median(np.abs(clipped[0] - clipped[1])[lesion])) if lesion.any() else 0.0
            for s in sizes:
                difference = np.clip(_resample(positive.hu, positive.spacing, s), *hu_window) - np.clip(
                    _resample(negative.hu, negative.spacing, s), *hu_window
                )
                sd = noise * np.sqrt(min(1.0, voxel / s**3))  # averaging lowers the noise; upsampling does not
                hits[f"{s:g} mm detectable"] += _visible(difference, k_sigma * sd, min_voxels)
                hits[f"{s:g} mm resolved"] += _visible(difference, max(k_sigma * sd, 0.5 * contrast), min_voxels)
            films = [project_radiograph(p.hu, m, p.spacing, film_px) for p, m in ((positive, positive.mask),
                                                                                  (negative, None))]  # fmt: skip
            film_difference = films[0][0].astype(np.float32) - films[1][0].astype(np.float32)
            film_sd = float(np.std(np.diff(films[1][0].astype(np.float32), axis=1))) / np.sqrt(2)
            on_film = films[0][1] > 0
            film_contrast = float(np.median(np.abs(film_difference[on_film]))) if on_film.any() else 0.0
            hits["radiograph detectable"] += _visible(film_difference, k_sigma * film_sd, min_voxels)
            hits["radiograph resolved"] += _visible(film_difference, max(k_sigma * film_sd, 0.5 * film_contrast),
                                                    min_voxels) and on_film.any()  # fmt: skip
        table[key] = {name: round(count / max(placed, 1), 2) for name, count in hits.items()}
        print(f"{key:38s} " + "  ".join(f"{name}: {value:.2f}" for name, value in table[key].items()), flush=True)
    result = {"num_cases": num_cases, "k_sigma": k_sigma, "min_voxels": min_voxels, "visible_fraction": table}
    if out_json:
        Path(out_json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    import fire

    fire.Fire({"run": run})
