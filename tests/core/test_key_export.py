"""The key export format, checked against matrix-nio's own reader and writer."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from nio.crypto.key_export import decrypt_and_read, encrypt_and_save

from skiffyd.core import key_export

if TYPE_CHECKING:
    from pathlib import Path

SESSIONS = [{"room_id": "!r:x", "session_id": "abc", "session_key": "k" * 40}]
ROUNDS = 1000  # nio's derivation is slow; the format is the same at any count


def test_nio_reads_what_skiffyd_writes(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(key_export.encrypt(json.dumps(SESSIONS).encode(), "pass phrase", rounds=ROUNDS))
    assert json.loads(decrypt_and_read(str(path), "pass phrase")) == SESSIONS


def test_skiffyd_reads_what_nio_writes(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    encrypt_and_save(json.dumps(SESSIONS).encode(), str(path), "pass phrase", count=ROUNDS)
    assert json.loads(key_export.decrypt(path.read_text(), "pass phrase")) == SESSIONS


def test_a_wrong_passphrase_or_a_changed_file_is_refused() -> None:
    text = key_export.encrypt(b"[]", "right", rounds=ROUNDS)
    with pytest.raises(key_export.KeyFileError, match="wrong passphrase"):
        key_export.decrypt(text, "wrong")
    lines = text.splitlines()
    middle = lines[1]
    flipped = middle[:10] + ("A" if middle[10] != "A" else "B") + middle[11:]
    with pytest.raises(key_export.KeyFileError):
        key_export.decrypt("\n".join([lines[0], flipped, *lines[2:]]), "right")
    with pytest.raises(key_export.KeyFileError, match="armour"):
        key_export.decrypt("hello", "right")
