"""Media-level errors. The gateway adapter turns them into OpenAI error objects;
this package never imports the gateway."""

from __future__ import annotations


class MediaError(Exception):
    """An attachment problem with the HTTP status it deserves (400 bad, 403 forbidden, 413 too big, ...)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def bad(message: str, code: str = "invalid_attachment") -> MediaError:
    return MediaError(400, message, code=code)


def forbidden(message: str, code: str = "attachment_forbidden") -> MediaError:
    return MediaError(403, message, code=code)


def too_large(message: str, code: str = "attachment_too_large") -> MediaError:
    return MediaError(413, message, code=code)


def unprocessable(message: str, code: str = "attachment_unreadable") -> MediaError:
    return MediaError(422, message, code=code)


def _rebuild(status: int, message: str, param: str | None, code: str | None) -> MediaError:
    return MediaError(status, message, param=param, code=code)


def _reduce(self: MediaError) -> tuple[object, tuple[int, str, str | None, str | None]]:
    return _rebuild, (self.status, self.message, self.param, self.code)


# Errors cross the process boundary from the parse child: keep them picklable (keyword-only args).
MediaError.__reduce__ = _reduce  # type: ignore[method-assign,assignment]
