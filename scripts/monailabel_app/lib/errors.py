"""What a client is told when the app refuses or fails a request: an HTTP status and one line of reason.

MONAI Label 0.8.5 answers any exception from an app with a bare ``500 Internal Server Error`` (the reason only in
the server log), but passes an ``HTTPException`` raised by the app through to the client as its status and
``{"detail": reason}``. The app therefore raises :class:`Refused` for what it refuses, and runs every request step
inside :func:`client_errors`, which turns a reader's :class:`~common.data.contract.DataContractError` about the
request's own image (also behind MONAI's ``Compose`` error) into a 422 with the reader's message, and anything else into a 500 that says what failed.
No traceback goes to the client; the server log has the full detail.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException

from common.data.contract import DataContractError, error_cause

logger = logging.getLogger(__name__)

__all__ = ["Refused", "client_errors", "shown_id"]


def shown_id(value: object, limit: int = 80) -> str:
    """``repr`` of a client-given id for messages and the log, cut to ``limit`` characters (ids can be 64 KiB)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 16]}...({len(text)} chars)"


class Refused(HTTPException):
    """A request the app refuses: ``status`` (404 unknown model / image, 413, 414, 422 bad image ...) and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status_code=status, detail=reason)


@contextmanager
def client_errors(action: str, shown: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Run one request step and answer its failure with a status and a reason.

    Args:
        action: what the step does, for the log and the 500 message (``"infer colipri_ct_findings"``).
        shown: server path -> the name the client used for it (``"image 'case0'"``); a reader's error about a path
            under one of them is a 422 with the path replaced by that name. The dict is yielded, so the step can add
            the paths it resolves.

    Raises:
        Refused: passed through unchanged; a ``DataContractError`` about a shown path becomes 422; a timeout 504;
            anything else 500 (``"<action> failed on the server (<type>); see the server log"``).
    """
    shown = {} if shown is None else shown
    try:
        yield shown
    except HTTPException as err:
        logger.warning(f"{action}: {err.status_code} {err.detail}")
        raise
    except concurrent.futures.TimeoutError as err:
        logger.warning(f"{action}: timed out")
        raise Refused(504, f"{action} did not finish in the server's time limit (MONAI_LABEL_INFER_TIMEOUT)") from err
    except Exception as err:
        cause = error_cause(err, DataContractError)
        source = cause.source if cause is not None else None
        match = next((p for p in shown if source is not None and (source == p or source.startswith(p + "/"))), None)
        if cause is not None and match is not None:
            reason = str(cause).replace(match, shown[match])
            logger.warning(f"{action}: 422 {cause}")
            raise Refused(422, reason) from err
        logger.exception(f"{action} failed")
        raise Refused(500, f"{action} failed on the server ({type(err).__name__}); see the server log") from err
