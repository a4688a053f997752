"""Credentials in the OS keyring: one item per account, one JSON document.

The item (service ``skiffy``, username = the Matrix user id) holds the
homeserver URL, user id, device id, tokens, the cache key and nio's pickle
key. One item makes a rotation atomic: the new document replaces the old in
one call. Blocking (D-Bus): call these from a worker thread.

There is never a plaintext fallback: with no usable backend (a headless
machine without a Secret Service) :class:`~skiffyd.errors.NoKeyringError`
says how to fix it, and backends that store plaintext are refused.
"""

from __future__ import annotations

import secrets

import keyring
import keyring.backend
import keyring.errors
import msgspec

from skiffyd.errors import CredentialsError, NoKeyringError

__all__ = ["SERVICE", "Credentials", "CredentialsError", "NoKeyringError", "delete", "load", "save"]

SERVICE = "skiffy"

NO_KEYRING_HELP = (
    "no usable OS keyring: skiffyd keeps its tokens and cache key only in one. "
    "On a Linux desktop, run a Secret Service (GNOME Keyring or KeePassXC) in your "
    "session; on a headless machine start one for your user "
    "(`apt-get install gnome-keyring dbus` and run skiffyd inside `dbus-run-session` "
    "with `gnome-keyring-daemon --unlock --components=secrets`), or select a backend "
    "explicitly with PYTHON_KEYRING_BACKEND. skiffyd never falls back to a plaintext file."
)


class Credentials(msgspec.Struct, kw_only=True):
    homeserver: str
    user_id: str
    device_id: str
    access_token: str
    refresh_token: str | None = None
    expires_at_ms: int | None = None
    cache_key: str  # 64 hex digits: the cache's SQLite3MC key
    pickle_key: str  # nio's crypto store pickle key

    def __repr__(self) -> str:
        return f"Credentials(user_id={self.user_id!r}, device_id={self.device_id!r}, <secrets redacted>)"

    __str__ = __repr__

    @staticmethod
    def new_cache_key() -> str:
        return secrets.token_hex(32)

    @staticmethod
    def new_pickle_key() -> str:
        return secrets.token_urlsafe(32)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Credentials)


def check_backend() -> keyring.backend.KeyringBackend:
    """The keyring backend in use, or :class:`NoKeyringError`."""
    backend = keyring.get_keyring()
    inner = list(getattr(backend, "backends", [backend]))
    names = [f"{type(b).__module__}.{type(b).__name__}" for b in inner]
    if any("plaintext" in n.lower() or "null" in n.lower() for n in names):
        raise NoKeyringError(
            "refusing a keyring backend that stores secrets in plaintext",
            details={"backends": names},
        )
    if not [n for n in names if not n.startswith("keyring.backends.fail")]:
        raise NoKeyringError(NO_KEYRING_HELP)
    return backend


def _translate(exc: Exception) -> CredentialsError:
    if isinstance(exc, keyring.errors.NoKeyringError):
        return NoKeyringError(NO_KEYRING_HELP)
    if isinstance(exc, keyring.errors.KeyringLocked):
        return CredentialsError("the keyring is locked: unlock it and try again")
    return CredentialsError(f"the keyring failed: {type(exc).__name__}")


def load(user_id: str) -> Credentials | None:
    check_backend()
    try:
        text = keyring.get_password(SERVICE, user_id)
    except Exception as exc:
        raise _translate(exc) from exc
    if text is None:
        return None
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise CredentialsError("the keyring item for this account is not readable") from exc


def save(creds: Credentials) -> None:
    check_backend()
    try:
        keyring.set_password(SERVICE, creds.user_id, _encoder.encode(creds).decode())
    except Exception as exc:
        raise _translate(exc) from exc


def delete(user_id: str) -> None:
    check_backend()
    try:
        keyring.delete_password(SERVICE, user_id)
    except keyring.errors.PasswordDeleteError:
        return
    except Exception as exc:
        raise _translate(exc) from exc
