"""The skiffyd error tree.

Every error skiffyd raises on purpose is a :class:`SkiffyError` with a stable
``code`` (``SKIFFY_{MODULE}_{ERROR}``, listed in :class:`ipc_schema.ErrorCode`),
a ``message`` for people that never contains a secret or a message body, and
optional ``details`` (plain JSON-able data, equally clean)::

    SkiffyError
    ├── IpcError            malformed, unknown or oversized requests; no daemon
    ├── DaemonError         already running, shutting down, internal
    ├── SessionError        not logged in, login failed, session expired
    ├── MatrixError         the homeserver side
    │   ├── InsecureHomeserverError   http:// to a non-loopback host
    │   ├── HomeserverUnreachableError  network errors, timeouts (transient)
    │   ├── BadResponseError          the server answered garbage (transient)
    │   └── RequestFailedError        a Matrix error answer (errcode, status)
    ├── CacheError          wrong key, corrupt file, unknown room
    ├── CredentialsError    no keyring backend, keyring failure, missing item
    ├── OutboxError         a message that can never be sent (empty, too big)
    └── ConfigError

Lower-layer exceptions (httpx, apsw, keyring, pynng) are translated into this
tree at the one module that talks to that library, with ``raise … from exc``.
They are turned into words for people in exactly one place (the CLI) and
into an error envelope in exactly one place (the IPC server).
"""

from __future__ import annotations

from typing import Any

from ipc_schema import ErrorCode


class SkiffyError(Exception):
    code: str = ErrorCode.DAEMON_INTERNAL

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class IpcError(SkiffyError):
    code = ErrorCode.IPC_MALFORMED


class DaemonNotRunningError(IpcError):
    code = ErrorCode.IPC_DAEMON_NOT_RUNNING


class DaemonError(SkiffyError):
    code = ErrorCode.DAEMON_INTERNAL


class DaemonAlreadyRunningError(DaemonError):
    code = ErrorCode.DAEMON_ALREADY_RUNNING


class SessionError(SkiffyError):
    code = ErrorCode.SESSION_NOT_LOGGED_IN


class NotLoggedInError(SessionError):
    code = ErrorCode.SESSION_NOT_LOGGED_IN


class LoginFailedError(SessionError):
    code = ErrorCode.SESSION_LOGIN_FAILED


class SessionExpiredError(SessionError):
    """The homeserver ended the session (revoked, or a refresh failed)."""

    code = ErrorCode.SESSION_EXPIRED

    def __init__(self, message: str, *, revoked: bool) -> None:
        super().__init__(message, details={"revoked": revoked})
        self.revoked = revoked


class MatrixError(SkiffyError):
    code = ErrorCode.MATRIX_REQUEST_FAILED
    #: True when retrying the same request later may succeed.
    transient: bool = False


class InsecureHomeserverError(MatrixError):
    code = ErrorCode.MATRIX_INSECURE_HOMESERVER


class HomeserverUnreachableError(MatrixError):
    code = ErrorCode.MATRIX_UNREACHABLE
    transient = True


class BadResponseError(MatrixError):
    code = ErrorCode.MATRIX_BAD_RESPONSE
    transient = True


class RequestFailedError(MatrixError):
    """The homeserver answered with a Matrix error (``errcode``)."""

    code = ErrorCode.MATRIX_REQUEST_FAILED

    def __init__(
        self,
        message: str,
        *,
        status: int,
        errcode: str | None,
        retry_after_ms: int | None = None,
        soft_logout: bool = False,
    ) -> None:
        super().__init__(
            message,
            details={"status": status, "errcode": errcode, "retry_after_ms": retry_after_ms},
        )
        self.status = status
        self.errcode = errcode
        self.retry_after_ms = retry_after_ms
        self.soft_logout = soft_logout
        self.transient = status == 429 or status >= 500


class CacheError(SkiffyError):
    code = ErrorCode.CACHE_CORRUPT


class CacheWrongKeyError(CacheError):
    code = ErrorCode.CACHE_WRONG_KEY


class UnknownRoomError(CacheError):
    code = ErrorCode.CACHE_UNKNOWN_ROOM


class CredentialsError(SkiffyError):
    code = ErrorCode.CREDENTIALS_KEYRING_FAILED


class NoKeyringError(CredentialsError):
    code = ErrorCode.CREDENTIALS_NO_KEYRING


class CredentialsMissingError(CredentialsError):
    code = ErrorCode.CREDENTIALS_MISSING


class OutboxError(SkiffyError):
    code = ErrorCode.OUTBOX_EMPTY_BODY


class ConfigError(SkiffyError):
    code = ErrorCode.CONFIG_INVALID
