"""The app's datastore: MONAI Label's local datastore confined to its studies folder, with uploads validated.

MONAI Label 0.8.5's ``LocalDatastore`` joins ids to the studies folder as given (``PUT /datastore/image?image=../x``
writes outside it), follows links out of it, and stores any upload. :class:`ConfinedDatastore` subclasses it and
checks before it acts:

* every image id it reads, writes, lists or removes resolves (links followed) to a file inside the studies folder,
  and every label tag to a folder inside ``labels/``; anything else is an unknown image (404);
* a new id is a plain name (letters, digits, ``.``, ``_``, ``-``; no ``..``) of at most ``MAX_ID_LENGTH`` characters;
* an upload is at most ``max_upload_bytes`` (413), has a suffix the served bundles' readers take, is read in full by
  the collection's readers (:func:`~common.data.readers.read_volume` for 3D bundles,
  :func:`~common.data.readers.read_radiograph` for 2D ones) and carries a text ``report`` if any; otherwise it is not
  stored and the client gets the reader's message (422).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from monailabel.datastore.local import LocalDatastore

from common.data.contract import DataContractError
from common.data.readers import RADIOGRAPH_SUFFIXES, VOLUME_SUFFIXES, read_radiograph, read_volume
from lib.errors import Refused, client_errors, shown_id
from lib.trainers.bundle_pretraining import training_fields

logger = logging.getLogger(__name__)

__all__ = ["MAX_ID_LENGTH", "ConfinedDatastore", "check_id_length", "image_checks"]

#: Longest image id or label tag (a file name on common file systems); a longer one is answered with 414.
MAX_ID_LENGTH = 255
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_READERS: dict[int, tuple[str, Callable[[Path], Any], tuple[str, ...]]] = {
    3: ("a CT volume", read_volume, VOLUME_SUFFIXES),
    2: ("a radiograph", read_radiograph, RADIOGRAPH_SUFFIXES),
}


def check_id_length(value: str, what: str = "image id") -> None:
    """Raise 414 for an id longer than :data:`MAX_ID_LENGTH` (it arrives in the request's URL)."""
    if len(value) > MAX_ID_LENGTH:
        raise Refused(414, f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")


def _check_plain_name(value: str, what: str) -> None:
    check_id_length(value, what)
    if not _PLAIN_NAME.fullmatch(value) or ".." in value:
        raise Refused(
            422,
            f"{what} {shown_id(value)} is not a plain name: use letters, digits, '.', '_' and '-' (no '..', no '/')",
        )


def image_checks(dims: Iterable[int]) -> tuple[tuple[str, Callable[[Path], Any]], ...]:
    """``(kind, reader)`` for each spatial dimensionality the served bundles take (3: CT volume, 2: radiograph)."""
    return tuple((_READERS[d][0], _READERS[d][1]) for d in sorted(set(dims), reverse=True))


class ConfinedDatastore(LocalDatastore):
    """A ``LocalDatastore`` that serves only files inside its studies folder and stores only readable images.

    Args:
        studies: the studies folder.
        dims: spatial dimensionalities of the served bundles (an upload must be readable as one of them).
        max_upload_bytes: largest accepted upload.
        kwargs: passed to ``LocalDatastore`` (``auto_reload``, ``read_only``); the file extensions are the readers'.
    """

    def __init__(self, studies: str | Path, dims: Iterable[int], max_upload_bytes: int, **kwargs: Any) -> None:
        dims = sorted(set(dims), reverse=True)
        self.checks = image_checks(dims)
        self.suffixes = tuple(dict.fromkeys(s for d in dims for s in _READERS[d][2]))
        self.max_upload_bytes = max_upload_bytes
        self.root = Path(os.path.realpath(studies))
        super().__init__(str(studies), extensions=tuple(f"*{s}" for s in self.suffixes), **kwargs)

    # -- where ids resolve -------------------------------------------------------------------------------------------

    def _inside(self, path: str | Path, folder: Path | None = None) -> bool:
        return Path(os.path.realpath(path)).is_relative_to(folder or self.root)

    def image_path(self, image_id: str) -> Path:
        """The file of a stored image, links followed; 404 for an unknown id or one that resolves outside the studies."""
        if not isinstance(image_id, str) or not image_id:
            raise Refused(404, "no image id given")
        check_id_length(image_id)
        uri = super().get_image_uri(image_id) if image_id in self._datastore.objects else ""
        if not uri:
            raise Refused(
                404, f"unknown image id {shown_id(image_id)}: not in the datastore (GET /datastore/?output=all)"
            )
        if not self._inside(uri):
            logger.warning(f"image id {shown_id(image_id)} resolves to {uri}, outside {self.root}: refused")
            raise Refused(404, f"unknown image id {shown_id(image_id)}: it resolves outside the datastore")
        return Path(uri)

    @property
    def labels_root(self) -> Path:
        return Path(os.path.realpath(self._datastore.label_path(None)))

    def _check_tag(self, tag: str) -> None:
        _check_plain_name(tag, "label tag")

    def get_image_uri(self, image_id: str) -> str:
        return str(self.image_path(image_id))

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        self.image_path(image_id)
        return super().get_image_info(image_id)

    def list_images(self) -> list[str]:
        """Ids that resolve inside the studies folder: a link out of it is logged and left out of training and sampling."""
        inside = []
        for image_id in super().list_images():
            uri = super().get_image_uri(image_id)
            if self._inside(uri):
                inside.append(image_id)
            else:
                logger.warning(f"datastore: {shown_id(image_id)} resolves to {uri}, outside {self.root}; left out")
        return inside

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        with client_errors(f"update info of {shown_id(image_id)}"):
            self.image_path(image_id)
            self._check_info(image_id, info)
            return super().update_image_info(image_id, info)

    def remove_image(self, image_id: str) -> None:
        with client_errors(f"remove image {shown_id(image_id)}"):
            self.image_path(image_id)  # LocalDatastore removes the link's target
            return super().remove_image(image_id)

    # -- uploads -----------------------------------------------------------------------------------------------------

    def _check_info(self, image_id: str, info: dict[str, Any]) -> None:
        try:
            training_fields(image_id, info)
        except ValueError as err:
            raise Refused(422, str(err)) from err

    def check_upload(self, image_id: str, path: Path, suffix: str) -> None:
        """Refuse an upload that is too large (413), of a type no served reader takes or unreadable (422)."""
        size = path.stat().st_size
        if size > self.max_upload_bytes:
            raise Refused(
                413,
                f"upload {shown_id(image_id)} is {size} bytes; the limit is {self.max_upload_bytes} (max_upload_mb)",
            )
        if suffix.lower() not in self.suffixes:
            raise Refused(
                422,
                f"upload {shown_id(image_id)}: unsupported file type {suffix or '(none)'!r}; expected one of "
                f"{list(self.suffixes)}",
            )
        problems = []
        for kind, read in self.checks:
            try:
                read(path)
                return
            except DataContractError as err:
                problems.append(f"not {kind}: {err.problem}" if len(self.checks) > 1 else err.problem)
        raise Refused(422, f"upload {shown_id(image_id)} ({suffix} file): {'; '.join(problems)}")

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        upload = Path(image_filename)
        default_id, suffix = self._to_id(upload.name)
        image_id = image_id or default_id
        try:
            with client_errors(f"upload {shown_id(image_id)}"):
                _check_plain_name(image_id, "image id")
                target = self.root / self._filename(image_id, suffix)
                if target.is_symlink() or not self._inside(target):
                    raise Refused(
                        422, f"image id {shown_id(image_id)} names a link out of the datastore; pick another id"
                    )
                self._check_info(image_id, image_info or {})
                self.check_upload(image_id, upload, suffix)
                return super().add_image(image_id, image_filename, image_info)
        except Refused:
            upload.unlink(missing_ok=True)  # a refused request's background clean-up does not run
            raise

    # -- labels (this app has no label task; MONAI Label clients may still save one) ------------------------------

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        with client_errors(f"save label of {shown_id(image_id)}"):
            self.image_path(image_id)
            self._check_tag(label_tag)
            target = Path(self._datastore.label_path(label_tag)) / self._filename(
                image_id, self._to_id(Path(label_filename).name)[1]
            )
            if not self._inside(target, self.labels_root):
                raise Refused(422, f"label {shown_id(image_id)} / {shown_id(label_tag)} resolves outside the datastore")
            return super().save_label(image_id, label_filename, label_tag, label_info)

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        self._check_tag(label_tag)
        uri = super().get_label_uri(label_id, label_tag)
        if uri and not self._inside(uri, self.labels_root):
            raise Refused(
                404, f"unknown label {shown_id(label_id)} / {shown_id(label_tag)}: it resolves outside the datastore"
            )
        return uri
