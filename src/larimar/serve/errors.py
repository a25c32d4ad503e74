"""Errors of the memory service; each becomes a JSON response {"error": code, "detail": message}."""

from __future__ import annotations


class ServeError(Exception):
    """A request that cannot be served; `status` is its HTTP code, `code` a short machine name."""

    status = 400
    code = "bad_request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(ServeError):
    status, code = 401, "unauthorized"


class Forbidden(ServeError):
    status, code = 403, "forbidden"


class NotFound(ServeError):
    status, code = 404, "not_found"


class Conflict(ServeError):
    status, code = 409, "conflict"


class TooLarge(ServeError):
    status, code = 413, "too_large"


class Invalid(ServeError):
    status, code = 422, "invalid"
