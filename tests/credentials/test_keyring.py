"""Credentials in a real Secret Service (gnome-keyring in a private D-Bus session).

The keyring library picks its backend from the environment at import, so
each check runs in a child process with the secret service's environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from skiffyd.devenv.procs import clean_env, no_keyring_env

if TYPE_CHECKING:
    from pathlib import Path

    from skiffyd.devenv.secret_service import SecretService

pytestmark = pytest.mark.integration


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_round_trip_is_one_item_under_the_user_id(secret_service: SecretService) -> None:
    result = _run(
        """
        import json, secretstorage
        from skiffyd import credentials
        from skiffyd.credentials import Credentials

        creds = Credentials(
            homeserver="https://hs.example", user_id="@kr:example", device_id="DEV",
            access_token="tok-1", cache_key=Credentials.new_cache_key(),
            pickle_key=Credentials.new_pickle_key(),
        )
        credentials.save(creds)
        loaded = credentials.load("@kr:example")
        # A rotation replaces the one item.
        credentials.save(Credentials(**{**{f: getattr(creds, f) for f in creds.__struct_fields__},
                                        "access_token": "tok-2"}))
        rotated = credentials.load("@kr:example")
        conn = secretstorage.dbus_init()
        items = list(secretstorage.search_items(conn, {"service": "skiffy"}))
        attrs = [dict(i.get_attributes()) for i in items]
        credentials.delete("@kr:example")
        credentials.delete("@kr:example")  # idempotent
        print(json.dumps({
            "backend": credentials.check_backend(),
            "same": loaded == creds,
            "rotated": rotated.access_token,
            "items": len(items),
            "users": sorted(a.get("username") for a in attrs),
            "after_delete": credentials.load("@kr:example") is None,
            "repr_clean": "tok-" not in repr(loaded) and loaded.cache_key not in repr(loaded),
        }))
        """,
        clean_env(**secret_service.env()),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out == {
        "backend": out["backend"],
        "same": True,
        "rotated": "tok-2",
        "items": 1,
        "users": ["@kr:example"],
        "after_delete": True,
        "repr_clean": True,
    }
    assert out["backend"] == "keyring.backends.SecretService.Keyring"


def test_no_keyring_is_a_clear_error_never_plaintext(tmp_path: Path) -> None:
    env = clean_env()
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    env["XDG_RUNTIME_DIR"] = str(tmp_path)  # no bus socket there either
    env["HOME"] = str(tmp_path)
    result = _run(
        """
        from skiffyd import credentials
        from skiffyd.credentials import Credentials
        try:
            credentials.save(Credentials(homeserver="h", user_id="@u:x", device_id="D",
                                         access_token="t", cache_key="k", pickle_key="p"))
        except credentials.NoKeyringError as exc:
            print(exc.code)
            print(exc.message)
        """,
        env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    code, message = result.stdout.splitlines()[:2]
    assert code == "SKIFFY_CREDENTIALS_NO_KEYRING"
    assert "Secret Service" in message
    assert "plaintext" in message
    # Nothing was written anywhere under HOME.
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_daemon_refuses_to_start_without_a_keyring(tmp_path: Path) -> None:
    env = no_keyring_env(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "skiffyd", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78  # EX_CONFIG: a restart cannot help
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("skiffyd: ")
    assert "[SKIFFY_CREDENTIALS_NO_KEYRING]" in last
