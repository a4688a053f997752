"""The Matrix key export format (client-server spec, "Key exports"): what Element reads and writes.

A passphrase-protected file of Megolm sessions::

    -----BEGIN MEGOLM SESSION DATA-----
    base64( 0x01 | salt[16] | iv[16] | rounds[4, big endian] | ciphertext | hmac[32] )
    -----END MEGOLM SESSION DATA-----

The key is PBKDF2-HMAC-SHA512(passphrase, salt, rounds) → 64 bytes: the first
32 are an AES-256-CTR key, the last 32 an HMAC-SHA256 key over everything
before the MAC. The plaintext is the JSON list of sessions.

matrix-nio has this too, but its key derivation runs a Python-level HMAC per
round: 500,000 rounds (Element's choice) took tens of seconds there and
0.4 s with :func:`hashlib.pbkdf2_hmac`. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

HEADER = "-----BEGIN MEGOLM SESSION DATA-----"
FOOTER = "-----END MEGOLM SESSION DATA-----"
#: Element's round count.
DEFAULT_ROUNDS = 500_000
_VERSION = 1


class KeyFileError(ValueError):
    """Not a key export, or not this passphrase."""


def _keys(passphrase: str, salt: bytes, rounds: int) -> tuple[bytes, bytes]:
    derived = hashlib.pbkdf2_hmac("sha512", passphrase.encode(), salt, rounds, 64)
    return derived[:32], derived[32:]


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    crypt = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return crypt.update(data) + crypt.finalize()


def encrypt(plaintext: bytes, passphrase: str, *, rounds: int = DEFAULT_ROUNDS) -> str:
    """The armoured file text for ``plaintext`` (the sessions' JSON)."""
    salt = os.urandom(16)
    iv = bytearray(os.urandom(16))
    iv[8] &= 0x7F  # bit 63 clear: the counter never wraps into the nonce (spec)
    aes_key, mac_key = _keys(passphrase, salt, rounds)
    body = (
        bytes([_VERSION]) + salt + bytes(iv) + rounds.to_bytes(4, "big")
        + _ctr(aes_key, bytes(iv), plaintext)
    )  # fmt: skip
    body += hmac.new(mac_key, body, hashlib.sha256).digest()
    encoded = base64.b64encode(body).decode()
    lines = [encoded[i : i + 96] for i in range(0, len(encoded), 96)]
    return "\n".join([HEADER, *lines, FOOTER]) + "\n"


def decrypt(text: str, passphrase: str) -> bytes:
    """The plaintext of an armoured key file; :class:`KeyFileError` if it does not open."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2 or lines[0] != HEADER or lines[-1] != FOOTER:
        raise KeyFileError("not a key export (no MEGOLM SESSION DATA armour)")
    try:
        body = base64.b64decode("".join(lines[1:-1]) + "==", validate=False)
    except ValueError as exc:
        raise KeyFileError("the key export is not base64") from exc
    if len(body) < 1 + 16 + 16 + 4 + 32 or body[0] != _VERSION:
        raise KeyFileError("not a version 1 key export")
    salt, iv = body[1:17], body[17:33]
    rounds = int.from_bytes(body[33:37], "big")
    if not 0 < rounds <= 10_000_000:
        raise KeyFileError("the key export names an implausible round count")
    ciphertext, mac = body[37:-32], body[-32:]
    aes_key, mac_key = _keys(passphrase, salt, rounds)
    if not hmac.compare_digest(hmac.new(mac_key, body[:-32], hashlib.sha256).digest(), mac):
        raise KeyFileError("wrong passphrase, or the file was changed")
    return _ctr(aes_key, iv, ciphertext)
