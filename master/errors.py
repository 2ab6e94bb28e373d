"""One exception tree for the master's HTTP surface, rendered in one place (api middleware).

Every error a client can cause is an ApiError; the middleware turns it into
`{"error": {"code", "message", "field"}}` with its status. Nothing else formats errors.
"""

from __future__ import annotations

from typing import Any

from master.model import FieldError


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}

    @classmethod
    def from_field_error(cls, exc: FieldError) -> ApiError:
        return BadRequest(exc.message, field=exc.field or None, code=exc.code)


class BadRequest(ApiError):
    status = 400
    code = "invalid_field"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class Conflict(ApiError):
    status = 409
    code = "id_conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "body_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class Unavailable(ApiError):
    """The store could not commit, or a limit is reached; the client should retry after
    `retry_after` seconds (never a 500)."""

    status = 503
    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class RequestTimeout(ApiError):
    status = 408
    code = "request_timeout"
