"""The simulated Files API: upload (multipart), retrieve, list and read back batch files.

Shapes follow OpenAI's: a ``file`` object ``{id, object, bytes, created_at, filename, purpose,
status, expires_at, status_details}``, and ``GET /v1/files/{id}/content`` returns the raw bytes.
Files live in memory for the app's lifetime; the batch book (``scheduler.sim.batches``) writes
its output and error files here too. The multipart body is parsed here (the simulator does not
depend on ``python-multipart``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import bodies
from .settings import SimSettings

__all__ = ["FileStore", "SimFile", "check_key", "parse_multipart"]

_EPOCH = 1_700_000_000
PURPOSES = frozenset({"batch", "batch_output", "fine-tune", "assistants", "vision", "user_data"})


@dataclass(frozen=True, slots=True, kw_only=True)
class SimFile:
    """One stored file and the moment it was created (simulator time)."""

    id: str
    filename: str
    purpose: str
    content: bytes
    created: float

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI ``file`` object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": _EPOCH + int(self.created),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


def check_key(request: Request, settings: SimSettings) -> Response | None:
    """The 401 answer for a missing or wrong key, None when the key is accepted."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() == "bearer" and key and settings.api_key in (None, key):
        return None
    body = bodies.error_body(
        bodies.MISSING_KEY if not key else "Incorrect API key provided.",
        type="invalid_request_error",
        code=None if not key else "invalid_api_key",
    )
    return JSONResponse(body, 401)


def parse_multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a ``multipart/form-data`` body: name -> (filename, bytes)."""
    boundary = None
    for piece in content_type.split(";")[1:]:
        param, _, value = piece.strip().partition("=")
        if param.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise ValueError("multipart body without a boundary")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in raw.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.partition(b"\r\n\r\n")
        data = data.removesuffix(b"\r\n")
        name: str | None = None
        filename: str | None = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if line.lower().startswith("content-disposition"):
                for item in line.split(";")[1:]:
                    key, _, value = item.strip().partition("=")
                    if key == "name":
                        name = value.strip('"')
                    elif key == "filename":
                        filename = value.strip('"')
        if name:
            fields[name] = (filename, data)
    return fields


def _invalid(message: str, *, param: str | None = None, status: int = 400) -> JSONResponse:
    return JSONResponse(
        bodies.error_body(message, type="invalid_request_error", param=param), status
    )


class FileStore:
    """Files by id, with the ``/v1/files`` routes over them."""

    def __init__(self, settings: SimSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self._files: dict[str, SimFile] = {}

    def add(self, filename: str, purpose: str, content: bytes) -> SimFile:
        """Store a file (an upload, or a batch's output) and return it."""
        file = SimFile(
            id=f"file-sim{len(self._files):08d}",
            filename=filename,
            purpose=purpose,
            content=content,
            created=self._clock(),
        )
        self._files[file.id] = file
        return file

    def get(self, file_id: str) -> SimFile | None:
        """The file with this id, if any."""
        return self._files.get(file_id)

    def routes(self) -> list[Route]:
        """The Files API routes."""
        return [
            Route("/v1/files", self._upload, methods=["POST"]),
            Route("/v1/files", self._list, methods=["GET"]),
            Route("/v1/files/{file_id}", self._retrieve, methods=["GET"]),
            Route("/v1/files/{file_id}/content", self._content, methods=["GET"]),
        ]

    async def _upload(self, request: Request) -> Response:
        refused = check_key(request, self.settings)
        if refused is not None:
            return refused
        try:
            fields = parse_multipart(request.headers.get("content-type", ""), await request.body())
        except ValueError as exc:
            return _invalid(str(exc))
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if purpose not in PURPOSES:
            return _invalid(f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        if "file" not in fields:
            return _invalid("Missing required parameter: 'file'.", param="file")
        filename, content = fields["file"]
        return JSONResponse(self.add(filename or "upload", purpose, content).to_dict())

    async def _list(self, request: Request) -> Response:
        refused = check_key(request, self.settings)
        if refused is not None:
            return refused
        purpose = request.query_params.get("purpose")
        data = [f.to_dict() for f in self._files.values() if purpose in (None, f.purpose)]
        return JSONResponse({"object": "list", "data": data, "has_more": False})

    def _found(self, request: Request) -> SimFile | Response:
        refused = check_key(request, self.settings)
        if refused is not None:
            return refused
        file_id = request.path_params["file_id"]
        file = self._files.get(file_id)
        if file is None:
            return _invalid(f"No such File object: {file_id}", param="id", status=404)
        return file

    async def _retrieve(self, request: Request) -> Response:
        found = self._found(request)
        return found if isinstance(found, Response) else JSONResponse(found.to_dict())

    async def _content(self, request: Request) -> Response:
        found = self._found(request)
        if isinstance(found, Response):
            return found
        return Response(found.content, 200, media_type="application/octet-stream")
