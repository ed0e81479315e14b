"""The collector's exception tree, mapped to HTTP in one place (app.py)."""

from __future__ import annotations


class CollectorError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class ConfigError(CollectorError):
    code = "bad_config"


class NotFound(CollectorError):
    status_code = 404
    code = "not_found"


class Unauthorized(CollectorError):
    status_code = 401
    code = "unauthorized"


class Forbidden(CollectorError):
    status_code = 403
    code = "forbidden"


class Conflict(CollectorError):
    status_code = 409
    code = "conflict"


class RateLimited(CollectorError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after + 0.999))


class StoreError(CollectorError):
    status_code = 503
    code = "store_unavailable"


class MigrationRequired(StoreError):
    code = "migration_required"
