"""Credentials: one item per account, one JSON document, never in plaintext.

The item holds the homeserver URL, user id, device id, tokens, the cache key
and nio's pickle key. One item makes a rotation atomic: the new document
replaces the old in one call. Blocking (D-Bus, scrypt): call these from a
worker thread.

Two stores, chosen explicitly in the config (:class:`skiffyd.config.Settings`):

* ``keyring`` (default): the OS keyring, service ``skiffy``, username = the
  Matrix user id (Secret Service, macOS Keychain, Windows Credential Locker).
* ``encrypted-file``: for headless machines. One file per account under the
  data dir, AES-256-GCM with a key derived by scrypt from a passphrase the
  service manager provides (systemd ``LoadCredentialEncrypted=``, whose
  plaintext lives only in the service's private ``$CREDENTIALS_DIRECTORY``).

There is never a plaintext fallback: with no usable keyring
:class:`~skiffyd.errors.NoKeyringError` says how to fix it, and keyring
backends that store plaintext are refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from typing import TYPE_CHECKING

import keyring
import keyring.backend
import keyring.errors
import msgspec

from skiffyd.errors import CredentialsError, NoKeyringError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["SERVICE", "Credentials", "CredentialsError", "NoKeyringError", "delete", "load", "save"]

SERVICE = "skiffy"

NO_KEYRING_HELP = (
    "no usable OS keyring: skiffyd keeps its tokens and cache key only in one. "
    "On a Linux desktop, run a Secret Service (GNOME Keyring or KeePassXC) in your "
    "session; on a headless machine start one for your user "
    "(`apt-get install gnome-keyring dbus` and run skiffyd inside `dbus-run-session` "
    "with `gnome-keyring-daemon --unlock --components=secrets`), or select a backend "
    "explicitly with PYTHON_KEYRING_BACKEND, or choose the encrypted-file store in "
    'config.toml ([credentials] backend = "encrypted-file"). '
    "skiffyd never falls back to a plaintext file."
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


def check_keyring() -> keyring.backend.KeyringBackend:
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


def _keyring_load(user_id: str) -> Credentials | None:
    check_keyring()
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


def _keyring_save(creds: Credentials) -> None:
    check_keyring()
    try:
        keyring.set_password(SERVICE, creds.user_id, _encoder.encode(creds).decode())
    except Exception as exc:
        raise _translate(exc) from exc


def _keyring_delete(user_id: str) -> None:
    check_keyring()
    try:
        keyring.delete_password(SERVICE, user_id)
    except keyring.errors.PasswordDeleteError:
        return
    except Exception as exc:
        raise _translate(exc) from exc


class EncryptedFileStore:
    """Credentials in files encrypted with a passphrase the service manager gives."""

    #: scrypt cost: about 0.1 s here, paid once per load or save.
    N, R, P = 2**15, 8, 1

    def __init__(self, directory: Path, passphrase_file: Path | None) -> None:
        self.directory = directory
        self.passphrase_file = passphrase_file

    def _passphrase(self) -> bytes:
        if self.passphrase_file is None:
            raise NoKeyringError(
                "the encrypted-file credentials store needs a passphrase: set "
                "[credentials] passphrase_file in config.toml, or run under systemd with "
                "LoadCredentialEncrypted=skiffyd-passphrase:…"
            )
        try:
            value = self.passphrase_file.read_bytes().strip()
        except OSError as exc:
            raise NoKeyringError(
                f"cannot read the credentials passphrase file ({exc.strerror})",
                details={"path": str(self.passphrase_file)},
            ) from exc
        if len(value) < 16:
            raise NoKeyringError("the credentials passphrase is shorter than 16 characters")
        return value

    def _path(self, user_id: str) -> Path:
        digest = hashlib.sha256(user_id.encode()).hexdigest()[:16]
        return self.directory / f"credentials-{digest}.enc"

    def _key(self, passphrase: bytes, salt: bytes) -> bytes:
        return hashlib.scrypt(
            passphrase, salt=salt, n=self.N, r=self.R, p=self.P, maxmem=64 * 1024 * 1024, dklen=32
        )

    def check(self) -> str:
        self._passphrase()
        return "encrypted-file"

    def load(self, user_id: str) -> Credentials | None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            doc = json.loads(self._path(user_id).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CredentialsError("the credentials file is not readable") from exc
        key = self._key(self._passphrase(), base64.b64decode(doc["salt"]))
        try:
            plain = AESGCM(key).decrypt(
                base64.b64decode(doc["nonce"]), base64.b64decode(doc["ct"]), user_id.encode()
            )
        except InvalidTag as exc:
            raise CredentialsError(
                "the credentials file does not open with this passphrase (wrong passphrase, "
                "or the file was altered)"
            ) from exc
        return _decoder.decode(plain)

    def save(self, creds: Credentials) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
        key = self._key(self._passphrase(), salt)
        ct = AESGCM(key).encrypt(nonce, _encoder.encode(creds), creds.user_id.encode())
        doc = {
            "v": 1,
            "kdf": "scrypt",
            "salt": base64.b64encode(salt).decode(),
            "nonce": base64.b64encode(nonce).decode(),
            "ct": base64.b64encode(ct).decode(),
        }
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._path(creds.user_id)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a rotation never leaves half a file

    def delete(self, user_id: str) -> None:
        self._path(user_id).unlink(missing_ok=True)


_file_store: EncryptedFileStore | None = None


def configure(backend: str, *, directory: Path, passphrase_file: Path | None) -> None:
    """Choose the store for this process (the daemon does, from its settings)."""
    global _file_store
    _file_store = (
        EncryptedFileStore(directory, passphrase_file) if backend == "encrypted-file" else None
    )


def check_backend() -> str:
    """The store in use, or :class:`NoKeyringError` saying how to fix it."""
    if _file_store is not None:
        return _file_store.check()
    backend = check_keyring()
    return f"{type(backend).__module__}.{type(backend).__name__}"


def load(user_id: str) -> Credentials | None:
    return _file_store.load(user_id) if _file_store else _keyring_load(user_id)


def save(creds: Credentials) -> None:
    if _file_store is not None:
        _file_store.save(creds)
    else:
        _keyring_save(creds)


def delete(user_id: str) -> None:
    if _file_store is not None:
        _file_store.delete(user_id)
    else:
        _keyring_delete(user_id)
