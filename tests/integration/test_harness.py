"""The harness itself: Synapse, registration, the nio peer, the Secret Service.

These run without skiffyd's daemon, so they say whether a failure elsewhere is
the harness's or skiffyd's.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from typing import TYPE_CHECKING

import httpx
import pytest

from skiffyd.devenv.synapse import SynapseError

if TYPE_CHECKING:
    from collections.abc import Callable

    from skiffyd.devenv.instance import SkiffyInstance
    from skiffyd.devenv.peer import Peer
    from skiffyd.devenv.secret_service import SecretService
    from skiffyd.devenv.synapse import Account, Synapse

pytestmark = pytest.mark.integration


def test_synapse_answers_versions(synapse: Synapse) -> None:
    assert synapse.base_url.startswith("http://127.0.0.1:")
    r = httpx.get(f"{synapse.base_url}/_matrix/client/versions", trust_env=False)
    assert r.status_code == 200
    assert "versions" in r.json()
    assert synapse.start_seconds is not None


def test_register_gives_unique_users(synapse: Synapse, make_user: Callable[..., Account]) -> None:
    a, b = make_user(), make_user()
    assert a.user_id != b.user_id
    assert a.user_id == f"@{a.localpart}:localhost"
    assert a.password not in repr(a)
    # The same localpart twice is refused.
    with pytest.raises(SynapseError):
        synapse.register(a.localpart, secrets.token_urlsafe(12))


def test_override_ratelimit_forces_429(synapse: Synapse, make_user: Callable[..., Account]) -> None:
    account = make_user("limited")
    synapse.override_ratelimit(account.user_id, messages_per_second=1, burst_count=1)
    headers = {"Authorization": f"Bearer {account.access_token}"}
    with httpx.Client(base_url=synapse.base_url, headers=headers, trust_env=False) as client:
        room = client.post("/_matrix/client/v3/createRoom", json={}).json()["room_id"]
        codes = [
            client.put(
                f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t{i}",
                json={"msgtype": "m.text", "body": f"m{i}"},
            ).status_code
            for i in range(5)
        ]
    assert 429 in codes
    synapse.delete_ratelimit_override(account.user_id)


def test_peer_logs_in_creates_sends_and_reads(
    make_user: Callable[..., Account], make_peer: Callable[..., Peer]
) -> None:
    alice, bob = make_peer(), make_peer()
    assert alice.user_id
    assert bob.user_id
    room_id = alice.create_room("harness", "topic", invite=[bob.user_id])
    assert bob.join(room_id) == room_id
    sent = [alice.send_text(room_id, f"hello {i}") for i in range(3)]
    seen = bob.wait_for_bodies(room_id, [f"hello {i}" for i in range(3)])
    assert [m.event_id for m in seen] == sent
    assert {m.sender for m in seen} == {alice.user_id}


def test_secret_service_round_trips_a_keyring_item(secret_service: SecretService) -> None:
    code = """
import json, keyring
backend = keyring.get_keyring()
keyring.set_password("skiffy-harness", "@someone:localhost", "s3cret-value")
got = keyring.get_password("skiffy-harness", "@someone:localhost")
keyring.delete_password("skiffy-harness", "@someone:localhost")
gone = keyring.get_password("skiffy-harness", "@someone:localhost")
print(json.dumps({"backend": type(backend).__module__, "ok": got == "s3cret-value", "gone": gone is None}))
"""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DBUS_SESSION_BUS_ADDRESS", "PYTHON_KEYRING_BACKEND")
    }
    env.update(secret_service.env())
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "backend": "keyring.backends.SecretService",
        "ok": True,
        "gone": True,
    }
    assert secret_service.start_seconds is not None


def test_instance_paths_fit_in_a_unix_socket(make_instance: Callable[..., SkiffyInstance]) -> None:
    inst = make_instance(start=False)
    assert len(str(inst.paths.command_socket)) <= 107
    assert inst.env["XDG_RUNTIME_DIR"].startswith(str(inst.root))
    assert "DBUS_SESSION_BUS_ADDRESS" in inst.env
