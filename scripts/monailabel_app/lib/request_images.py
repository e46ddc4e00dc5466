"""Which file an infer request's ``image`` names: a datastore image, the file uploaded with the request, or nothing.

MONAI Label 0.8.5 reads ``image`` as a server path whenever such a path exists (relative to the server's working
directory, so ``../../etc/passwd`` too) and otherwise asks the datastore; a client's ``params`` JSON can also set
``image``. :class:`RequestImages` resolves it before MONAI Label sees it, to an absolute path it has checked:

* a datastore image id -> its file, which the datastore keeps inside the studies folder (unknown ids: 404);
* a file under the app's private upload folder (where ``POST /infer`` with ``file=`` stores the upload for the
  request) or under MONAI Label's session folder (``PUT /session``) -> that file;
* any other absolute path -> 403, unless the app runs with ``--conf allow_absolute_paths true`` (a trusted local
  setup, e.g. 3D Slicer on the same machine), when it is read as given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from monailabel.interfaces.datastore import Datastore

from lib.datastore import check_id_length
from lib.errors import Refused, shown_id

__all__ = ["RequestImages"]


@dataclass(frozen=True)
class RequestImages:
    """Resolve infer requests' ``image`` values.

    Attributes:
        upload_dir: the app's private folder for the files uploaded with ``POST /infer`` (``tempfile.tempdir``).
        session_dir: MONAI Label's session folder, or None when sessions are off.
        allow_absolute_paths: read any absolute server path as given (off by default).
    """

    upload_dir: Path
    session_dir: Path | None = None
    allow_absolute_paths: bool = False

    def is_upload(self, path: str | Path) -> bool:
        """True for a file the app stored for a request (``POST /infer`` with a file): an absolute path in the folder."""
        return os.path.isabs(path) and Path(os.path.realpath(path)).is_relative_to(os.path.realpath(self.upload_dir))

    def resolve(self, image: object, datastore: Datastore) -> tuple[Path, str]:
        """``(absolute path, the name the client knows it by)`` for an infer request's ``image``.

        Raises:
            Refused: no image (422), an over-long id (414), an unknown id or missing upload (404), a server path
                outside the upload and session folders while ``allow_absolute_paths`` is off (403).
        """
        if not isinstance(image, str) or not image.strip():
            raise Refused(422, f"no image given ({shown_id(image)}): pass image=<datastore image id> or upload a file")
        check_id_length(image)
        if not os.path.isabs(image):
            uri = datastore.get_image_uri(image)  # the app's ConfinedDatastore raises 404 for an unknown id
            if not uri:
                raise Refused(
                    404, f"unknown image id {shown_id(image)}: not in the datastore (GET /datastore/?output=all)"
                )
            return Path(uri), f"image {shown_id(image)}"
        real = Path(os.path.realpath(image))
        for folder, name in ((self.upload_dir, "uploaded file"), (self.session_dir, "session image")):
            if folder is not None and real.is_relative_to(os.path.realpath(folder)):
                if not real.exists():
                    raise Refused(404, f"the {name} is gone (uploads last for their request)")
                return real, f"{name} ({''.join(real.suffixes) or 'no suffix'})"
        if not self.allow_absolute_paths:
            raise Refused(
                403,
                "image is a server path; this server serves datastore image ids only (a trusted local setup can "
                "start it with --conf allow_absolute_paths true)",
            )
        if not real.exists():
            raise Refused(404, f"{image}: no such file or folder on the server")
        return real, image
