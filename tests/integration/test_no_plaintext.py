"""No message body or password on disk in plaintext, and none in the logs."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest

from skiffyd.devenv.wait import wait_for
from tests.integration.test_e2ee import encrypted_room

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from skiffyd.devenv.peer import Peer
    from tests.conftest import Ready

pytestmark = pytest.mark.integration


def files_containing(root: Path, needles: dict[str, bytes]) -> list[tuple[str, str]]:
    """(file relative to root, needle label) for every hit; labels, never values."""
    hits = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for label, needle in needles.items():
            if needle in data:
                hits.append((str(path.relative_to(root)), label))
    return hits


def test_cache_and_logs_hold_no_plaintext(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    topic = f"topic-{secrets.token_hex(8)}"
    room_id = ready.shared_room(f"Secret room {secrets.token_hex(4)}", topic)
    from_peer = [f"peer-körper-{secrets.token_hex(8)}" for _ in range(3)]
    from_us = [f"our-body-{secrets.token_hex(8)}" for _ in range(3)]
    for body in from_peer:
        peer.send_text(room_id, body)
    for body in from_us:
        inst.send(room_id, body)

    def all_sent() -> bool:
        msgs = inst.messages(room_id, limit=500)
        sent = {m["body"] for m in msgs if m["status"] == "sent"}
        return set(from_peer + from_us) <= sent

    wait_for(all_sent, timeout=60, what="all messages sent", describe=inst.log_tail)

    needles = {f"body {i}": b.encode() for i, b in enumerate(from_peer + from_us)}
    needles["password"] = ready.account.password.encode()
    # The logs must hold no body or password ...
    log_needles = dict(needles)
    # ... and the cache is encrypted as a whole, not only the bodies.
    needles["room topic"] = topic.encode()

    data_home, state_home = inst.data_home, inst.state_home
    assert any(p.is_file() for p in data_home.rglob("*")), "no cache files at all"
    # While it runs (WAL and journal files included) ...
    hits = files_containing(data_home, needles) + files_containing(state_home, needles)
    assert not hits, f"plaintext on disk: {hits}"
    # ... and after a clean shutdown.
    inst.terminate()
    hits = files_containing(data_home, needles) + files_containing(state_home, needles)
    assert not hits, f"plaintext on disk: {hits}"

    log = inst.log_path.read_bytes()
    leaked = [label for label, needle in log_needles.items() if needle in log]
    assert not leaked, f"the daemon's log contains: {leaked}"


def test_encrypted_rooms_leave_no_plaintext_in_cache_or_crypto_store(
    ready: Ready, make_peer: Callable[..., Peer]
) -> None:
    inst = ready.daemon
    peer = make_peer(encrypted=True)
    room_id = encrypted_room(ready, peer)
    from_peer = [f"e2ee-peer-{secrets.token_hex(8)}" for _ in range(3)]
    from_us = [f"e2ee-ours-{secrets.token_hex(8)}" for _ in range(3)]
    for body in from_peer:
        peer.send_text(room_id, body)
    for body in from_us:
        inst.send(room_id, body)

    def all_read() -> bool:
        msgs = inst.messages(room_id, limit=500)
        shown = {m["body"] for m in msgs if m["status"] == "sent" and m["encrypted"]}
        return set(from_peer + from_us) <= shown

    wait_for(all_read, timeout=60, what="every message decrypted", describe=inst.log_tail)
    needles = {f"body {i}": b.encode() for i, b in enumerate(from_peer + from_us)}
    crypto_files = [p for p in inst.data_home.rglob("crypto*") if p.is_file()]
    assert crypto_files, "no crypto store on disk"
    for stopped in (False, True):
        if stopped:
            inst.terminate()
        hits = files_containing(inst.data_home, needles) + files_containing(
            inst.state_home, needles
        )
        assert not hits, f"plaintext on disk (daemon stopped: {stopped}): {hits}"
    log = inst.log_path.read_bytes()
    assert not [label for label, needle in needles.items() if needle in log]
