"""Deterministic chest-CT phantoms with reports, labels and lesion masks: the embedded default dataset (v2).

Each phantom is an analytic chest drawn on an anisotropic voxel grid and stored as a RAS-oriented int16 HU NIfTI,
with a uint8 lesion map (class ``i + 1`` = ``FINDINGS[i]``), a CT report, and a digitally reconstructed radiograph
(DRR) of the same body with its own chest X-ray report and radiograph labels.

* **Findings**: the 18 CT-RATE abnormalities (:mod:`common.data.findings`), drawn jointly from a Gaussian copula
  fitted to 689 real labelled chest-CT reports (:mod:`common.data.label_model`: real prevalences and pairwise
  co-occurrences), each painted with a size/severity distribution by :mod:`common.data.phantom_lesions`.
* **Inter-patient variation** (:mod:`common.data.phantom_anatomy`): body size and habitus, lung and heart size,
  diaphragm height, sex, arms up/down, patient yaw and position, normal variants and incidental findings; field of
  view, pixel size, slice spacing and thickness, kernel, noise and IV contrast per study.
* **Reports**: organ-by-organ CT reports with hedges and negations (:mod:`common.data.report_writer`); radiograph
  reports and CheXpert-named labels for the DRRs (:mod:`common.data.radiograph_findings`).

Deliberate simplifications (documented deviations from real data): lobes are split by planar fissures; the heart
is one ellipsoid without chambers; there is no motion, streak, beam-hardening or metal artefact; the patient's yaw
is applied to the finished tissue map, so the ``details`` coordinates are in the unrotated patient frame.
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
from tqdm.auto import tqdm

from common.data.findings import FINDINGS
from common.data.label_model import sample_labels
from common.data.phantom_anatomy import KERNELS, TISSUE_HU, TISSUES
from common.data.phantom_lesions import LOBES, SIDES, ChestWithFindings
from common.data.radiograph_findings import CXR_FINDINGS, radiograph_labels, write_radiograph_report
from common.data.report_writer import write_report

__all__ = [
    "GENERATOR_VERSION",
    "KEYS_TO_CLASS",
    "LOBES",
    "SIDES",
    "TISSUES",
    "Phantom",
    "generate_dataset",
    "make_phantom",
    "project_radiograph",
    "write_report",
]

GENERATOR_VERSION = "phantoms-v2"
_T = TISSUES
KEYS_TO_CLASS: dict[str, int] = {f.key: i + 1 for i, f in enumerate(FINDINGS)}  # lesion mask class of each finding
_MASK_OF_TISSUE: dict[str, str] = {
    "device_metal": "medical_material", "device_plastic": "medical_material",
    "calcification": "arterial_wall_calcification", "pericardial_fluid": "pericardial_effusion",
    "coronary_calcification": "coronary_artery_wall_calcification", "hernia_air": "hiatal_hernia",
    "hernia_content": "hiatal_hernia", "hernia_wall": "hiatal_hernia", "enlarged_node": "lymphadenopathy",
    "emphysema": "emphysema", "bulla": "emphysema", "atelectasis": "atelectasis", "nodule": "lung_nodule",
    "subsolid_nodule": "lung_nodule", "ground_glass": "lung_opacity", "fibrosis": "pulmonary_fibrotic_sequela",
    "effusion": "pleural_effusion", "mosaic_low": "mosaic_attenuation_pattern",
    "thick_bronchial_wall": "peribronchial_thickening", "consolidation": "consolidation",
    "ectatic_wall": "bronchiectasis", "ectatic_lumen": "bronchiectasis", "septal_line": "interlobular_septal_thickening",
}  # fmt: skip
_SPLITS = {"training": 0, "image_only": 1, "validation": 2, "test": 3}
_CASE_PREFIX = {"training": "train", "image_only": "unpaired", "validation": "val", "test": "test"}


@dataclass
class Phantom:
    """One phantom case.

    Attributes:
        case_id: identifier, e.g. ``train_00012``.
        hu: ``(X, Y, Z)`` int16 Hounsfield units, axes ordered R, A, S (+X is the patient's right... see
            :meth:`patient_axes`).
        mask: ``(X, Y, Z)`` uint8 lesion label map, class ``i + 1`` for ``FINDINGS[i]``, 0 background.
        tissue: ``(X, Y, Z)`` uint8 tissue classes, codes in :data:`TISSUES`.
        affine: ``(4, 4)`` voxel-to-RAS world affine in mm.
        labels: ``{finding_key: 0 | 1}`` for every finding of the vocabulary.
        details: per present finding, what the report states (``lobe``, ``side``, ``size``, ``severity``, ...).
        study: acquisition and patient settings (contrast, kernel, slice thickness, sex, arms, variants, ...).
        report: free-text CT report (``FINDINGS: ... IMPRESSION: ...``).
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
    study: dict[str, Any] = field(default_factory=dict)
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


class _Chest(ChestWithFindings):
    """Anatomy + findings + the intensity model of one study."""

    def rotate(self) -> None:
        """Apply the patient's yaw on the table to the finished tissue map (nearest neighbour, about the FOV centre)."""
        from scipy.ndimage import rotate

        yaw = self.study["yaw_deg"]
        if abs(yaw) >= 0.5:
            self.tissue = rotate(self.tissue, yaw, axes=(0, 1), reshape=False, order=0, mode="constant", cval=0)

    def to_hu(self) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        u, g, T, st = self.rng.uniform, self.grid, self.tissue, self.study
        table = np.full(256, -1000.0, dtype=np.float32)
        for name, code in _T.items():
            table[code] = TISSUE_HU[name] + (u(-6, 6) if name not in ("air", "airway", "device_metal") else 0.0)
        varied = {
            "lung": (self.lung_density, self.lung_density), "emphysema": (-965, -930), "bulla": (-1000, -985),
            "mosaic_low": (self.lung_density - 140, self.lung_density - 70), "ground_glass": (-650, -400),
            "fibrosis": (-250, 0), "septal_line": (-600, -400), "atelectasis": (15, 45), "consolidation": (10, 50),
            "nodule": (20, 60), "subsolid_nodule": (-550, -300), "effusion": (0, 20), "pericardial_fluid": (0, 20),
            "enlarged_node": (30, 50), "hernia_content": (10, 40), "device_plastic": (300, 900),
            "coronary_calcification": (300, 1000), "calcification": (600, 1400), "breast": (-70, 10),
        }  # fmt: skip
        for name, (low, high) in varied.items():
            table[_T[name]] = u(low, high)
        if st["contrast"]:
            for name, (low, high) in {"aorta": (200, 350), "heart": (140, 260), "svc": (250, 700),
                                      "vessel": (150, 300)}.items():  # fmt: skip
                table[_T[name]] = u(low, high)
            for name, gain in {"liver": (40, 60), "enlarged_node": (15, 30), "lymph_node": (10, 25),
                               "atelectasis": (30, 60), "consolidation": (15, 35), "muscle": (5, 15),
                               "abdomen": (20, 40), "hernia_wall": (20, 40)}.items():  # fmt: skip
                table[_T[name]] += u(*gain)
        gradient = u(20, 60)
        body = (T != 0).any(axis=2)
        rows, cols = np.nonzero(body)
        crop = (slice(max(rows.min() - 3, 0), rows.max() + 4), slice(max(cols.min() - 3, 0), cols.max() + 4))
        t = T[crop]
        hu = np.take(table, t)
        aerated = np.isin(t, [_T["lung"], _T["emphysema"], _T["mosaic_low"]])
        ramp = (gradient * (self.cy - g.axes[1][crop[1]]) / self.B).astype(np.float32)
        hu += aerated * ramp[None, :, None]
        # reconstruction: slice thickness (FWHM along z), kernel blur and edge enhancement, then noise
        sigma_xy, sharpen, noise_corr = KERNELS[st["kernel"]]
        sigma = [sigma_xy / g.spacing[0], sigma_xy / g.spacing[1], st["slice_thickness_mm"] / 2.355 / g.spacing[2]]
        hu = gaussian_filter(hu, sigma, mode="nearest")
        if sharpen:
            hu += np.float32(sharpen) * (hu - gaussian_filter(hu, [1.0, 1.0, 0.0], mode="nearest"))
        noise = _noise(hu.shape, self.rng, 1.0)
        if noise_corr:
            noise = gaussian_filter(noise, [noise_corr, noise_corr, 0.0], mode="wrap")
        noise *= np.float32(st["noise_hu"] / max(float(noise.std()), 1e-6))
        noise[t == 0] = 0.0
        hu += noise
        out = np.full(T.shape, -1000, dtype=np.int16)
        out[crop] = np.clip(np.rint(hu), -1024, 3071)
        out[crop][t == 0] = -1000  # outside the body stays exactly -1000 HU (as a scanner's padding)
        return out

    def lesion_mask(self) -> np.ndarray:
        table = np.zeros(256, dtype=np.uint8)
        for tissue, key in _MASK_OF_TISSUE.items():
            table[_T[tissue]] = KEYS_TO_CLASS[key]
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


_FILM_WINDOW = (1.2, 7.0)  # line integral of attenuation mapped to black ... white
_FILM_GAMMA = 1.4
_FILM_MASK_ORDER = (
    "emphysema", "cardiomegaly", "pericardial_effusion", "pleural_effusion", "lung_opacity", "consolidation",
    "atelectasis", "pulmonary_fibrotic_sequela", "hiatal_hernia", "lymphadenopathy", "arterial_wall_calcification",
    "lung_nodule", "medical_material",
)  # fmt: skip
"""CT mask classes projected onto the film, the most focal drawn last; CT-only findings are left out."""
_FILM_MASK_PRIORITY = tuple(KEYS_TO_CLASS[k] for k in _FILM_MASK_ORDER)
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
        mask: optional ``(X, Y, Z)`` lesion label map. A film pixel takes the most focal class on its ray among
            :data:`_FILM_MASK_ORDER` (devices > nodule > calcification > ... > emphysema); CT-only classes are dropped.
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
    present = np.bitwise_or.reduce(
        np.left_shift(np.uint32(1), mask.astype(np.uint32)), axis=1
    )  # (X, Z) bit c set if class c on ray
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
    """Independent label, anatomy, findings, intensity, CT-text and radiograph-text generators of one case.

    Separate streams make a phantom and its twin with other findings share anatomy and intensities exactly, and
    make a case the same for any dataset size.
    """
    streams = np.random.SeedSequence(entropy=seed, spawn_key=(_SPLITS[split], index, 2)).spawn(6)
    return [np.random.default_rng(stream) for stream in streams]


def make_phantom(
    seed: int = 0, split: str = "training", index: int = 0, labels: dict[str, int] | None = None
) -> Phantom:
    """Build one phantom, deterministic in ``(seed, split, index)``.

    Args:
        seed: dataset seed.
        split: ``training``, ``image_only``, ``validation`` or ``test``; each split draws its own cases.
        index: case number within the split.
        labels: force findings on (1) or off (0); unspecified findings are drawn from the co-occurrence model
            (:func:`common.data.label_model.sample_labels`). Anatomy, findings, intensities and text use separate
            random streams, so the same case with other ``labels`` is its exact counterfactual twin. A finding that
            finds no room is left out and its label set to 0, so labels always match the image.

    Returns:
        The :class:`Phantom` (volume, lesion mask, tissue map, affine, labels, details, study, report).

    Raises:
        ValueError: unknown ``split`` or finding key.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(_SPLITS)}")
    label_rng, rng, findings_rng, intensity_rng, text_rng, _ = _case_rngs(seed, split, index)
    wanted = dict(sample_labels(label_rng))
    unknown = set(labels or {}) - set(wanted)
    if unknown:
        raise ValueError(f"unknown finding keys {sorted(unknown)}; known: {list(wanted)}")
    wanted.update({k: int(bool(v)) for k, v in (labels or {}).items()})
    chest = _Chest(rng, wanted)
    chest.draw()
    chest.rng = findings_rng
    chest.paint_findings()
    chest.rotate()
    chest.rng = intensity_rng
    hu = chest.to_hu()
    affine = np.diag([*chest.grid.spacing, 1.0])
    affine[:3, 3] = chest.origin
    geometry = {
        "cavity_center_y": float(chest.cy), "cavity_half_width": float(chest.A), "cavity_half_depth": float(chest.B),
        "shift_x": float(chest.shift[0]), "shift_y": float(chest.shift[1]), "shift_z": float(chest.shift[2]),
        "heart_scale": float(chest.heart_radii[0] / (56 * chest.s)), "body_scale": float(chest.s),
        "fat_mm": float(chest.fat), "dome_right_mm": float(chest.z_dome_r),
    }  # fmt: skip
    return Phantom(
        case_id=f"{_CASE_PREFIX[split]}_{index:05d}",
        hu=hu,
        mask=chest.lesion_mask(),
        tissue=chest.tissue,
        affine=affine,
        labels=dict(chest.labels),
        details=chest.details,
        report=write_report(chest.labels, chest.details, chest.study, text_rng),
        study=chest.study,
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
    cxr_labels = radiograph_labels(phantom.labels, phantom.details)
    cxr_report = write_radiograph_report(cxr_labels, phantom.details, _case_rngs(seed, split, index)[5])
    paired = split != "image_only"
    section = "training" if split == "image_only" else split
    records = []
    views = (
        ("ct", [round(v, 4) for v in phantom.spacing], phantom.report, dict(phantom.labels)),
        ("cxr", [round(pixel, 4)] * 2, cxr_report, cxr_labels),
    )
    for image_key, spacing, report, labels in views:
        meta: dict[str, Any] = {"case_id": phantom.case_id, "split": section, "spacing": spacing, "paired": paired}
        record: dict[str, Any] = {"image": files[image_key]}
        if paired:
            record.update(report=report, labels=labels, mask=files[f"{image_key}_mask"])
        else:  # image-only: no report; labels and mask are kept out of sight, for evaluation only
            meta.update(labels=labels, mask=files[f"{image_key}_mask"])
        meta["findings"] = phantom.details
        meta["study"] = phantom.study
        if image_key == "cxr":
            meta["ct_labels"] = dict(phantom.labels)
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
    progress: bool = True,
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
        progress: show a progress bar over the cases.

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
    bar = {"total": len(jobs), "desc": f"phantoms ({GENERATOR_VERSION})", "unit": "case", "disable": not progress}
    if num_workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            results = list(tqdm(pool.map(_write_case, *zip(*jobs), chunksize=4), **bar))
    else:
        results = [_write_case(*job) for job in tqdm(jobs, **bar)]
    lists: dict[int, dict[str, list]] = {3: {s: [] for s in ("training", "validation", "test")}, 2: {}}
    lists[2] = {s: [] for s in lists[3]}
    for job, (record_3d, record_2d) in zip(jobs, results):
        section = "training" if job[2] == "image_only" else job[2]
        lists[3][section].append(record_3d)
        lists[2][section].append(record_2d)
    descriptions = {
        3: f"Embedded chest phantoms ({GENERATOR_VERSION}, seed {seed}); labels and lesion masks follow "
        "common.data.findings.FINDINGS (mask class i + 1 = FINDINGS[i]).",
        2: f"DRRs of the embedded chest phantoms ({GENERATOR_VERSION}, seed {seed}); labels follow "
        "common.data.radiograph_findings.CXR_FINDINGS, masks the CT classes of common.data.findings.FINDINGS "
        "(class i + 1 = FINDINGS[i]) visible on a radiograph.",
    }
    for d, modality in ((3, "CT"), (2, "radiograph (DRR)")):
        content = {"name": f"{GENERATOR_VERSION} {modality}", "description": descriptions[d], **lists[d]}
        (out / f"datalist_{d}d.json").write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    manifest = {
        "generator": GENERATOR_VERSION,
        "seed": int(seed),
        "sizes": {k: int(v) for k, v in counts.items()},
        "image_size_2d": int(image_size_2d),
        "mask_classes": {"0": "background", **{str(i + 1): f.key for i, f in enumerate(FINDINGS)}},
        "radiograph_labels": [f.key for f in CXR_FINDINGS],
    }
    (out / "phantoms.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return str(out / f"datalist_{dims}d.json")


def cli() -> None:
    """``medvlp-phantoms`` / ``python -m common.data.phantom``: :func:`generate_dataset` on the command line."""
    import fire

    fire.Fire(generate_dataset)


if __name__ == "__main__":
    cli()
