"""Every command of issue 4, end to end: the CLI on one side, a matrix-nio peer on the other.

Each test drives ``skiffyd`` through its command line and checks the effect
on the server through the peer (a client nobody here wrote): the event it
reads, the state of the room, receipts, typing, profiles, account data.
Where the account's own server-side data matters (``m.direct``,
``m.fully_read``, what a forgotten room still shows), a second nio client
logged in as the daemon's account reads it.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import TYPE_CHECKING, Any

import pytest

from ipc_schema import ErrorCode
from skiffyd.devenv.instance import parse_json_list
from skiffyd.devenv.peer import PeerError, q
from skiffyd.devenv.wait import WaitTimeout, wait_for

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

    from skiffyd.devenv.instance import SkiffyInstance, TailProcess
    from skiffyd.devenv.peer import Peer
    from skiffyd.devenv.synapse import Synapse
    from tests.conftest import Ready

pytestmark = pytest.mark.integration

HTML = "org.matrix.custom.html"
ERROR_LINE = re.compile(r"^skiffyd: .+ \[(SKIFFY_[A-Z0-9_]+)\]$")
MESSAGE_FIELDS = {
    "event_id",
    "room_id",
    "sender",
    "body",
    "ts",
    "status",
    "txn_id",
    "msgtype",
    "type",
    "format",
    "formatted_body",
    "edited",
    "redacted",
    "reactions",
    "my_reactions",
    "reply_to",
    "thread_root",
    "thread_count",
    "thread_latest",
    "content",
}
ROOM_FIELDS = {
    "room_id",
    "name",
    "topic",
    "is_encrypted",
    "member_count",
    "unread_count",
    "membership",
    "is_direct",
    "direct_user",
    "tags",
    "read_receipt",
    "fully_read",
}
OUTBOX_FIELDS = {
    "txn_id",
    "room_id",
    "kind",
    "event_type",
    "state",
    "attempts",
    "last_error",
    "target",
}


# ------------------------------------------------------------------ helpers


def unique(label: str) -> str:
    return f"{label}-{secrets.token_hex(5)}"


def until(inst: SkiffyInstance, what: str, probe: Callable[[], Any], timeout: float = 30) -> Any:
    return wait_for(probe, timeout=timeout, interval=0.2, what=what, describe=inst.log_tail)


def error_code(r: subprocess.CompletedProcess[str], what: str) -> str:
    """The code of a failed command's one-line error (``skiffyd: … [CODE]``)."""
    assert r.returncode != 0, f"{what}: exit status 0, stdout {r.stdout.strip()!r}"
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{what}: expected one line on stderr, got {r.stderr!r}"
    match = ERROR_LINE.match(lines[0])
    assert match, f"{what}: not `skiffyd: … [SKIFFY_…]`: {lines[0]!r}"
    return match.group(1)


def room_id_of(out: str) -> str:
    """The room id a command printed (a bare id, or JSON with ``room_id``)."""
    text = out.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("room_id"), str):
        return str(value["room_id"])
    assert len(text.split()) == 1, f"expected a room id, got {text!r}"
    assert text.startswith("!"), f"expected a room id, got {text!r}"
    return text


def cli_json(inst: SkiffyInstance, *args: str) -> Any:
    return json.loads(inst.cli_ok(*args))


def rows(inst: SkiffyInstance, room_id: str) -> list[dict[str, Any]]:
    return inst.messages(room_id, limit=500)


def sent_row(
    inst: SkiffyInstance, room_id: str, txn_id: str, timeout: float = 30
) -> dict[str, Any]:
    """The daemon's row for ``txn_id`` once it is ``sent`` with an event id."""

    def probe() -> dict[str, Any] | None:
        for m in rows(inst, room_id):
            if m["txn_id"] == txn_id and m["status"] == "sent" and m["event_id"]:
                return m
        return None

    row: dict[str, Any] = until(inst, f"{txn_id} sent", probe, timeout)
    return row


def row_for(inst: SkiffyInstance, room_id: str, event_id: str) -> dict[str, Any] | None:
    return next((m for m in rows(inst, room_id) if m["event_id"] == event_id), None)


def room_row(inst: SkiffyInstance, room_id: str) -> dict[str, Any] | None:
    return next((r for r in inst.rooms() if r["room_id"] == room_id), None)


def wait_daemon_sees(inst: SkiffyInstance, room_id: str, event_ids: list[str]) -> None:
    until(
        inst,
        f"{len(event_ids)} events in `skiffyd messages`",
        lambda: set(event_ids) <= {m["event_id"] for m in rows(inst, room_id)},
    )


def wait_outbox_empty(inst: SkiffyInstance, timeout: float = 60) -> None:
    until(
        inst,
        "an empty outbox",
        lambda: inst.status()["pending_outbox"] == 0 and inst.outbox() == [],
        timeout,
    )


def peer_events(
    peer: Peer,
    room_id: str,
    match: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 30,
) -> list[dict[str, Any]]:
    """Poll the peer's full view of the room until some events match; those events."""

    def probe() -> list[dict[str, Any]] | None:
        found = [e for e in peer.events(room_id) if match(e)]
        return found or None

    found: list[dict[str, Any]] = wait_for(
        probe, timeout=timeout, interval=0.2, what=f"the peer to see {what}"
    )
    return found


def relates(event: dict[str, Any]) -> dict[str, Any]:
    rel = event.get("content", {}).get("m.relates_to")
    return rel if isinstance(rel, dict) else {}


def subscribe(ready: Ready, room_id: str, tail: TailProcess) -> None:
    """Make sure ``tail`` is connected: peer warm-ups until one is printed."""

    def printed_warm_up() -> bool:
        if not tail.alive():
            raise AssertionError(f"skiffyd tail exited: {tail.stderr()}")
        ready.peer.send_text(room_id, unique("warm-up"))
        try:
            wait_for(
                lambda: any(
                    str((e.get("message") or {}).get("body", "")).startswith("warm-up-")
                    for e in tail.events()
                    if e.get("type") == "message_added"
                ),
                timeout=5,
                interval=0.1,
            )
        except WaitTimeout:
            return False
        return True

    wait_for(printed_warm_up, timeout=60, interval=0.1, what="`skiffyd tail` to print a warm-up")


def full_sync_cycles(ready: Ready, room_id: str, cycles: int = 2) -> None:
    """Let the daemon finish ``cycles`` syncs that started after now.

    Each round trip is proved by a peer message it brought into the cache, so
    whatever the daemon would do on its own after a sync has had its chance.
    """
    for _ in range(cycles):
        nudge = ready.peer.send_text(room_id, unique("nudge"))
        wait_daemon_sees(ready.daemon, room_id, [nudge])


def daemon_room(ready: Ready, *args: str) -> str:
    """``skiffyd create ARGS…``; the new room's id, once the cache has it as joined."""
    room_id = room_id_of(ready.daemon.cli_ok("create", *args))
    until(
        ready.daemon,
        f"the new room {room_id} in `skiffyd rooms`",
        lambda: (r := room_row(ready.daemon, room_id)) and r["membership"] == "join",
    )
    return room_id


# ----------------------------------------------------------------- messages


def test_send_text_markdown_plain_notice_emote(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = ready.shared_room("Send kinds")
    token = secrets.token_hex(4)
    plain = unique("just words")
    markdown = f"**bold-{token}** and `code-{token}`"
    literal = f"**not-bold-{token}**"
    raw_html = f"<script>alert({token})</script> *soft-{token}*"
    notice = unique("a notice")
    emote = unique("waves")

    txns = {
        "plain": inst.cli_txn("send", room_id, plain),
        "markdown": inst.cli_txn("send", room_id, markdown),
        "literal": inst.cli_txn("send", room_id, literal, "--plain"),
        "raw_html": inst.cli_txn("send", room_id, raw_html),
        "notice": inst.cli_txn("send", room_id, notice, "--notice"),
        "emote": inst.cli_txn("send", room_id, emote, "--emote"),
    }
    out = inst.cli_ok("send", room_id, unique("as json"), "--json")
    value = json.loads(out)
    assert set(value) == {"txn_id"}, out
    assert isinstance(value["txn_id"], str), out
    txns["json"] = value["txn_id"]
    assert len(set(txns.values())) == len(txns), "txn ids are not unique"

    sent = {name: sent_row(inst, room_id, txn) for name, txn in txns.items()}
    for m in sent.values():
        assert set(m) >= MESSAGE_FIELDS, sorted(MESSAGE_FIELDS - set(m))
        assert m["sender"] == ready.account.user_id
        assert m["room_id"] == room_id
        assert m["type"] == "m.room.message"
    seen = {name: peer.event(room_id, m["event_id"]) for name, m in sent.items()}
    for name, event in seen.items():
        assert event["sender"] == ready.account.user_id, name
        assert event["type"] == "m.room.message", name

    c = seen["plain"]["content"]
    assert (c["msgtype"], c["body"]) == ("m.text", plain)
    assert "formatted_body" not in c, "plain text got a formatted_body"
    assert "format" not in c
    assert sent["plain"]["formatted_body"] is None

    c = seen["markdown"]["content"]
    assert (c["msgtype"], c["body"], c.get("format")) == ("m.text", markdown, HTML)
    assert f"<strong>bold-{token}</strong>" in c["formatted_body"]
    assert f"<code>code-{token}</code>" in c["formatted_body"]
    assert (sent["markdown"]["format"], sent["markdown"]["formatted_body"]) == (
        HTML,
        c["formatted_body"],
    )

    c = seen["literal"]["content"]
    assert c["body"] == literal
    assert "formatted_body" not in c, "--plain still rendered Markdown"

    c = seen["raw_html"]["content"]
    assert c["body"] == raw_html
    assert f"<em>soft-{token}</em>" in c["formatted_body"]
    assert "<script>" not in c["formatted_body"], "raw HTML passed through to formatted_body"
    assert "&lt;script&gt;" in c["formatted_body"]

    assert seen["notice"]["content"]["msgtype"] == "m.notice"
    assert seen["notice"]["content"]["body"] == notice
    assert sent["notice"]["msgtype"] == "m.notice"
    assert seen["emote"]["content"]["msgtype"] == "m.emote"
    assert seen["emote"]["content"]["body"] == emote
    assert sent["emote"]["msgtype"] == "m.emote"

    # One room, one queue: the peer sees them in the order they were sent.
    order = [sent[name]["event_id"] for name in txns]
    timeline = [e["event_id"] for e in peer.events(room_id) if e["event_id"] in order]
    assert timeline == order


def test_reply_and_thread(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = ready.shared_room("Replies")
    root = peer.send_text(room_id, unique("root"))
    wait_daemon_sees(inst, room_id, [root])

    reply_body = unique("reply")
    reply = sent_row(inst, room_id, inst.cli_txn("send", room_id, reply_body, "--reply-to", root))
    thread_body = unique("in thread")
    thread = sent_row(inst, room_id, inst.cli_txn("send", room_id, thread_body, "--thread", root))

    event = peer.event(room_id, reply["event_id"])
    assert event["content"]["body"] == reply_body
    assert relates(event).get("m.in_reply_to") == {"event_id": root}
    assert relates(event).get("rel_type") is None, "a plain reply is not in a thread"
    assert reply["reply_to"] == root

    event = peer.event(room_id, thread["event_id"])
    assert event["content"]["body"] == thread_body
    assert relates(event)["rel_type"] == "m.thread"
    assert relates(event)["event_id"] == root
    assert thread["thread_root"] == root

    m = until(
        inst,
        "the thread counted on its root",
        lambda: (r := row_for(inst, room_id, root)) and r["thread_count"] == 1 and r,
    )
    assert m["thread_latest"] == thread["event_id"]


def test_edit_redact_react_unreact(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = ready.shared_room("Edits")
    own = sent_row(inst, room_id, inst.send(room_id, unique("first draft")))
    theirs = peer.send_text(room_id, unique("from the peer"))
    wait_daemon_sees(inst, room_id, [theirs])

    # Edit (Markdown rendered in the new content).
    token = secrets.token_hex(4)
    new_text = f"second _draft-{token}_"
    edit_txn = inst.cli_txn("edit", room_id, own["event_id"], new_text)
    assert edit_txn != own["txn_id"]
    [edit] = peer_events(
        peer,
        room_id,
        lambda e: (
            relates(e).get("rel_type") == "m.replace"
            and relates(e).get("event_id") == own["event_id"]
        ),
        "the edit",
    )
    assert edit["sender"] == ready.account.user_id
    new_content = edit["content"]["m.new_content"]
    assert new_content["body"] == new_text
    assert new_content["msgtype"] == "m.text"
    assert new_content.get("format") == HTML
    assert f"<em>draft-{token}</em>" in new_content["formatted_body"]
    assert edit["content"]["body"].endswith(new_text), "no fallback body for older clients"
    m = until(
        inst,
        "the edit in `skiffyd messages`",
        lambda: (r := row_for(inst, room_id, own["event_id"])) and r["edited"] and r,
    )
    assert m["body"] == new_text
    assert [x["event_id"] for x in rows(inst, room_id)].count(own["event_id"]) == 1

    # Edit again with --plain: no formatted body.
    literal = f"third *draft-{token}*"
    inst.cli_txn("edit", room_id, own["event_id"], literal, "--plain")
    [plain_edit] = peer_events(
        peer,
        room_id,
        lambda e: e["content"].get("m.new_content", {}).get("body") == literal,
        "the --plain edit",
    )
    assert relates(plain_edit) == {"rel_type": "m.replace", "event_id": own["event_id"]}
    assert "formatted_body" not in plain_edit["content"]["m.new_content"]
    until(
        inst,
        "the second edit in `skiffyd messages`",
        lambda: (r := row_for(inst, room_id, own["event_id"])) and r["body"] == literal,
    )

    # React to the peer's message, then take it back.
    inst.cli_txn("react", room_id, theirs, "👍")
    [reaction] = peer_events(
        peer,
        room_id,
        lambda e: e["type"] == "m.reaction" and e["sender"] == ready.account.user_id,
        "the reaction",
    )
    assert relates(reaction) == {"rel_type": "m.annotation", "event_id": theirs, "key": "👍"}
    m = until(
        inst,
        "the reaction in `skiffyd messages`",
        lambda: (r := row_for(inst, room_id, theirs)) and r["reactions"] and r,
    )
    assert m["reactions"] == {"👍": 1}
    assert m["my_reactions"] == ["👍"]

    inst.cli_txn("unreact", room_id, theirs, "👍")
    wait_for(
        lambda: peer.event(room_id, reaction["event_id"])["content"] == {},
        timeout=30,
        interval=0.2,
        what="the reaction redacted on the server",
    )
    gone = peer.event(room_id, reaction["event_id"])
    assert gone["unsigned"]["redacted_because"]["sender"] == ready.account.user_id
    until(
        inst,
        "the reaction gone from `skiffyd messages`",
        lambda: (r := row_for(inst, room_id, theirs)) and r["reactions"] == {},
    )
    assert row_for(inst, room_id, theirs)["my_reactions"] == []  # type: ignore[index]

    # Redact the account's own message, with a reason.
    reason = unique("because")
    inst.cli_txn("redact", room_id, own["event_id"], "--reason", reason)
    wait_for(
        lambda: peer.event(room_id, own["event_id"])["content"] == {},
        timeout=30,
        interval=0.2,
        what="the message redacted on the server",
    )
    because = peer.event(room_id, own["event_id"])["unsigned"]["redacted_because"]
    assert because["sender"] == ready.account.user_id
    assert because["content"].get("reason") == reason
    until(
        inst,
        "the redaction in `skiffyd messages`",
        lambda: (r := row_for(inst, room_id, own["event_id"])) and r["redacted"],
    )
    wait_outbox_empty(inst)


def test_read_sets_the_receipt_and_fully_read(ready: Ready, make_peer: Callable[..., Peer]) -> None:
    inst, peer = ready.daemon, ready.peer
    me = make_peer(account=ready.account)  # the account's own server-side data
    room_id = ready.shared_room("Receipts")
    events = [peer.send_text(room_id, unique(f"unread-{i}")) for i in range(3)]
    wait_daemon_sees(inst, room_id, events)
    user = ready.account.user_id

    inst.cli_ok("read", room_id, events[1])
    wait_for(
        lambda: peer.read_receipts(room_id).get(user) == events[1],
        timeout=30,
        interval=0.2,
        what="the peer to see the account's read receipt on the 2nd message",
    )
    wait_for(
        lambda: (me.account_data("m.fully_read", room_id) or {}).get("event_id") == events[1],
        timeout=30,
        interval=0.2,
        what="m.fully_read on the 2nd message",
    )
    room = until(
        inst,
        "the receipt in `skiffyd rooms`",
        lambda: (r := room_row(inst, room_id)) and r["read_receipt"] == events[1] and r,
    )
    assert set(room) >= ROOM_FIELDS, sorted(ROOM_FIELDS - set(room))
    assert room["fully_read"] == events[1]

    # No event id: up to the latest.
    inst.cli_ok("read", room_id)
    wait_for(
        lambda: peer.read_receipts(room_id).get(user) == events[2],
        timeout=30,
        interval=0.2,
        what="the peer to see the receipt move to the latest message",
    )
    wait_for(
        lambda: (me.account_data("m.fully_read", room_id) or {}).get("event_id") == events[2],
        timeout=30,
        interval=0.2,
        what="m.fully_read on the latest message",
    )
    until(
        inst,
        "nothing unread",
        lambda: (
            (r := room_row(inst, room_id))
            and (r["read_receipt"], r["fully_read"], r["unread_count"]) == (events[2], events[2], 0)
        ),
    )
    wait_outbox_empty(inst)


def test_typing_on_and_off(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = ready.shared_room("Typing")
    user = ready.account.user_id
    inst.cli_ok("typing", room_id, "on")
    wait_for(
        lambda: user in peer.typing_users(room_id),
        timeout=30,
        interval=0.2,
        what="the peer to see the account typing",
    )
    inst.cli_ok("typing", room_id, "off")
    wait_for(
        lambda: user not in peer.typing_users(room_id),
        timeout=30,
        interval=0.2,
        what="the peer to see the account stop typing",
    )


# -------------------------------------------------------------------- rooms


def test_create_public_private_encrypted_and_direct(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer

    name, topic = unique("Public"), unique("all welcome")
    public = daemon_room(ready, "--name", name, "--topic", topic, "--public")
    assert peer.join(public) == public  # no invite needed
    assert peer.state(public, "m.room.name") == {"name": name}
    assert (peer.state(public, "m.room.topic") or {}).get("topic") == topic
    assert (peer.state(public, "m.room.join_rules") or {}).get("join_rule") == "public"
    assert peer.state(public, "m.room.encryption") is None
    [create] = [e for e in peer.events(public) if e["type"] == "m.room.create"]
    assert create["sender"] == ready.account.user_id
    room = until(
        inst,
        "the public room's name and topic in `skiffyd rooms`",
        lambda: (r := room_row(inst, public)) and r["name"] == name and r["topic"] == topic and r,
    )
    assert room["is_encrypted"] is False

    private = daemon_room(ready, "--name", unique("Private"))
    with pytest.raises(PeerError):
        peer.join(private)  # invite only

    enc_name = unique("Secret")
    encrypted = daemon_room(
        ready, "--name", enc_name, "--encrypted", "--invite", peer.user_id or ""
    )
    wait_for(
        lambda: encrypted in peer.invites(),
        timeout=30,
        interval=0.2,
        what="the peer's invite to the encrypted room",
    )
    assert peer.join(encrypted) == encrypted
    assert (peer.state(encrypted, "m.room.encryption") or {}).get(
        "algorithm"
    ) == "m.megolm.v1.aes-sha2"
    assert (peer.state(encrypted, "m.room.join_rules") or {}).get("join_rule") != "public"
    assert (peer.membership(encrypted, ready.account.user_id) or {}).get("membership") == "join"
    until(
        inst,
        "the room shown as encrypted",
        lambda: (r := room_row(inst, encrypted)) and r["is_encrypted"] is True,
    )
    # Sends there go out encrypted (tests/integration/test_e2ee.py reads them).
    secret = unique("never-plaintext")
    inst.send(encrypted, secret)
    wait_outbox_empty(inst)
    ours = [e for e in peer.events(encrypted) if e.get("sender") == ready.account.user_id]
    assert "m.room.encrypted" in {e["type"] for e in ours}
    assert not any(secret in json.dumps(e) for e in ours)

    direct = daemon_room(ready, "--direct", "--invite", peer.user_id or "")

    def direct_invite() -> dict[str, Any] | None:
        for event in peer.invites().get(direct, []):
            if event.get("type") == "m.room.member" and event.get("state_key") == peer.user_id:
                return dict(event.get("content", {}))
        return None

    invite = wait_for(
        direct_invite, timeout=30, interval=0.2, what="the peer's invite to the direct room"
    )
    assert invite.get("membership") == "invite"
    assert invite.get("is_direct") is True


def test_join_by_alias_leave_and_forget(ready: Ready, make_peer: Callable[..., Peer]) -> None:
    inst, peer = ready.daemon, ready.peer
    me = make_peer(account=ready.account)
    user = ready.account.user_id
    alias_local = unique("lobby")
    room_id = peer.create_room_with(
        {"preset": "public_chat", "room_alias_name": alias_local, "name": "Lobby"}
    )
    missing = f"#no-such-{secrets.token_hex(4)}:{ready.synapse.server_name}"
    error_code(inst.cli("join", missing), "join of an unknown alias")
    joined = room_id_of(inst.cli_ok("join", f"#{alias_local}:{ready.synapse.server_name}"))
    assert joined == room_id
    assert (peer.membership(room_id, user) or {}).get("membership") == "join"
    until(
        inst,
        "the joined room in `skiffyd rooms`",
        lambda: (r := room_row(inst, room_id)) and r["membership"] == "join",
    )

    inst.cli_ok("leave", room_id)
    assert (peer.membership(room_id, user) or {}).get("membership") == "leave"
    assert room_id not in me.joined_rooms()
    until(
        inst,
        "the room no longer joined in `skiffyd rooms`",
        lambda: (r := room_row(inst, room_id)) is None or r["membership"] == "leave",
    )
    # Left but not forgotten: the account can still read its own leave.
    assert (me.membership(room_id, user) or {}).get("membership") == "leave"

    inst.cli_ok("forget", room_id)
    status, _ = me.request(
        "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.member/{q(user)}"
    )
    assert status == 403, f"the server still shows the forgotten room to the account ({status})"
    until(
        inst,
        "the forgotten room gone from `skiffyd rooms`",
        lambda: room_row(inst, room_id) is None,
    )
    # It stays gone through later syncs.
    other = ready.shared_room("After forgetting")
    full_sync_cycles(ready, other)
    assert room_row(inst, room_id) is None


def test_forget_a_joined_room_leaves_it(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = ready.shared_room("Forget while joined")
    inst.cli_ok("forget", room_id)
    assert (peer.membership(room_id, ready.account.user_id) or {}).get("membership") == "leave"
    until(inst, "the room gone from `skiffyd rooms`", lambda: room_row(inst, room_id) is None)


def test_invite_kick_and_ban(ready: Ready, make_peer: Callable[..., Peer]) -> None:
    inst, peer = ready.daemon, ready.peer
    me = make_peer(account=ready.account)  # a banned peer may not read the room any more
    assert peer.user_id is not None
    room_id = daemon_room(ready, "--name", unique("Moderated"))

    def peer_membership() -> dict[str, Any]:
        return me.membership(room_id, peer.user_id or "") or {}

    def daemon_membership(expected: str) -> None:
        until(
            inst,
            f"the peer's membership {expected!r} in `skiffyd members --all`",
            lambda: any(
                m["user_id"] == peer.user_id and m["membership"] == expected
                for m in parse_json_list(inst.cli_ok("members", room_id, "--all", "--json"))
            ),
        )

    inst.cli_ok("invite", room_id, peer.user_id)
    wait_for(lambda: room_id in peer.invites(), timeout=30, interval=0.2, what="the peer's invite")
    peer.join(room_id)
    daemon_membership("join")
    members = parse_json_list(inst.cli_ok("members", room_id, "--json"))
    assert {"user_id", "membership", "display_name"} <= set(members[0])

    reason = unique("kicked for testing")
    inst.cli_ok("kick", room_id, peer.user_id, "--reason", reason)
    kicked = peer_membership()
    assert (kicked.get("membership"), kicked.get("reason")) == ("leave", reason)
    own_view = peer.membership(room_id, peer.user_id) or {}
    assert own_view.get("membership") == "leave"
    assert room_id not in peer.joined_rooms()
    daemon_membership("leave")

    inst.cli_ok("invite", room_id, peer.user_id)
    wait_for(lambda: room_id in peer.invites(), timeout=30, interval=0.2, what="the second invite")
    peer.join(room_id)
    daemon_membership("join")
    reason = unique("banned for testing")
    inst.cli_ok("ban", room_id, peer.user_id, "--reason", reason)
    banned = peer_membership()
    assert (banned.get("membership"), banned.get("reason")) == ("ban", reason)
    with pytest.raises(PeerError):
        peer.join(room_id)
    daemon_membership("ban")


def test_dm_creates_once_and_updates_m_direct(ready: Ready, make_peer: Callable[..., Peer]) -> None:
    inst, peer = ready.daemon, ready.peer
    me = make_peer(account=ready.account)
    assert peer.user_id is not None
    assert me.account_data("m.direct") is None  # a fresh account

    room_id = room_id_of(inst.cli_ok("dm", peer.user_id))
    # Asked again at once (before any sync brought m.direct back): the same room.
    again = room_id_of(inst.cli_ok("dm", peer.user_id))
    assert again == room_id, "a second `dm` created another room"

    direct = me.account_data("m.direct") or {}
    assert direct.get(peer.user_id) == [room_id], direct

    def invite_member() -> dict[str, Any] | None:
        for event in peer.invites().get(room_id, []):
            if event.get("type") == "m.room.member" and event.get("state_key") == peer.user_id:
                return dict(event.get("content", {}))
        return None

    invite = wait_for(invite_member, timeout=30, interval=0.2, what="the peer's DM invite")
    assert invite.get("is_direct") is True

    room = until(
        inst,
        "the DM marked direct in `skiffyd rooms`",
        lambda: (r := room_row(inst, room_id)) and r["is_direct"] and r,
    )
    assert room["direct_user"] == peer.user_id

    # Once the peer has joined, and after m.direct came back by sync: still the same room.
    peer.join(room_id)
    until(
        inst,
        "the peer joined in `skiffyd members`",
        lambda: any(
            m["user_id"] == peer.user_id and m["membership"] == "join"
            for m in parse_json_list(inst.cli_ok("members", room_id, "--json"))
        ),
    )
    assert room_id_of(inst.cli_ok("dm", peer.user_id)) == room_id
    assert (me.account_data("m.direct") or {}).get(peer.user_id) == [room_id]
    dms = [r for r in inst.rooms() if r["is_direct"] and r["direct_user"] == peer.user_id]
    assert [r["room_id"] for r in dms] == [room_id]


# ------------------------------------------------------------------- people


def test_profile_get_and_set_name(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    user = ready.account.user_id
    own = cli_json(inst, "profile", "get", "--json")
    assert set(own) >= {"user_id", "display_name", "avatar_url"}
    assert own["user_id"] == user
    assert own["display_name"] == ready.account.localpart  # Synapse's default
    assert own["avatar_url"] is None

    theirs = cli_json(inst, "profile", "get", peer.user_id or "", "--json")
    assert theirs["user_id"] == peer.user_id
    assert theirs["display_name"] == peer.profile(peer.user_id or "").get("displayname")

    nobody = f"@nobody-{secrets.token_hex(4)}:localhost"
    error_code(inst.cli("profile", "get", nobody, "--json"), "profile get of an unknown user")

    room_id = ready.shared_room("Names")
    name = f"Skiffy Tester {secrets.token_hex(3)}"
    inst.cli_ok("profile", "set-name", name)
    assert peer.profile(user).get("displayname") == name
    assert cli_json(inst, "profile", "get", "--json")["display_name"] == name
    # The server updates the account's member event in its rooms; the peer sees it there too.
    wait_for(
        lambda: (peer.membership(room_id, user) or {}).get("displayname") == name,
        timeout=30,
        interval=0.2,
        what="the new display name in the room",
    )
    until(
        inst,
        "the new display name in `skiffyd members`",
        lambda: any(
            m["user_id"] == user and m["display_name"] == name
            for m in parse_json_list(inst.cli_ok("members", room_id, "--json"))
        ),
    )


def test_users_search_finds_the_peers(ready: Ready, make_peer: Callable[..., Peer]) -> None:
    inst, peer = ready.daemon, ready.peer
    second = make_peer()
    # Synapse's directory shows users who share a room with the searcher.
    room_id = ready.shared_room("Directory")
    peer.invite(room_id, second.user_id or "")
    second.join(room_id)
    peer_local = (peer.user_id or "").split(":")[0].lstrip("@")

    def search(*args: str) -> dict[str, Any]:
        value: dict[str, Any] = cli_json(inst, "users", "search", *args, "--json")
        return value

    def finds_peer() -> dict[str, Any] | None:
        r = search(peer_local)
        return r if any(u["user_id"] == peer.user_id for u in r["results"]) else None

    found = wait_for(
        finds_peer,
        timeout=30,
        interval=0.3,
        what="the peer in `skiffyd users search`",
    )
    assert set(found) >= {"results", "limited"}
    assert isinstance(found["limited"], bool)
    hit = next(u for u in found["results"] if u["user_id"] == peer.user_id)
    assert set(hit) >= {"user_id", "display_name", "avatar_url"}
    assert hit["display_name"] == peer_local

    # Both peers' names start with "peer-": a limit of one is reported as limited.
    wait_for(
        lambda: {peer.user_id, second.user_id} <= {u["user_id"] for u in search("peer")["results"]},
        timeout=30,
        interval=0.3,
        what="both peers in `skiffyd users search peer`",
    )
    limited = search("peer", "--limit", "1")
    assert len(limited["results"]) == 1
    assert limited["limited"] is True
    nobody = search(f"zz{secrets.token_hex(8)}")
    assert nobody["results"] == []


# ------------------------------------------------------------------- outbox


def test_failed_item_holds_its_room_until_retry_or_cancel(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = ready.shared_room("Held queue")
    other_room = ready.shared_room("Unaffected")
    sent_row(inst, room_id, inst.send(room_id, unique("warm")))
    assert inst.outbox() == []

    with inst.tail() as tail:
        subscribe(ready, room_id, tail)
        # The account (power 0) may no longer post: the server answers 403.
        peer.set_power_levels(room_id, events_default=50)
        bodies = [unique(f"held-{i}") for i in range(3)]
        txns = [inst.send(room_id, body) for body in bodies]

        def items() -> dict[str, dict[str, Any]]:
            return {i["txn_id"]: i for i in inst.outbox()}

        failed = until(
            inst,
            "the first message failed in `skiffyd outbox list`",
            lambda: (i := items()).get(txns[0], {}).get("state") == "failed" and i,
        )
        first = failed[txns[0]]
        assert set(first) >= OUTBOX_FIELDS, sorted(OUTBOX_FIELDS - set(first))
        assert (first["room_id"], first["kind"], first["event_type"]) == (
            room_id,
            "event",
            "m.room.message",
        )
        error = str(first["last_error"] or "")
        assert "403" in error or "M_FORBIDDEN" in error, error
        for txn in txns[1:]:
            assert failed[txn]["state"] == "queued", failed[txn]
            assert failed[txn]["attempts"] == 0, "an item behind a failed one was tried"
        assert inst.status()["pending_outbox"] >= 2
        echo = next(m for m in rows(inst, room_id) if m["txn_id"] == txns[0])
        assert echo["status"] == "failed"

        published = until(
            inst,
            "an outbox_updated event for the failure",
            lambda: [
                e
                for e in tail.events()
                if e.get("type") == "outbox_updated"
                and e["item"]["txn_id"] == txns[0]
                and e["item"]["state"] == "failed"
            ],
        )
        assert published[0]["item"]["last_error"]

        # Other rooms are not held.
        free = sent_row(inst, other_room, inst.send(other_room, unique("elsewhere")))
        assert free["event_id"]

        # Allowed again, but the room stays held until the user decides.
        peer.set_power_levels(room_id, events_default=0)
        full_sync_cycles(ready, other_room)
        still = items()
        assert still[txns[0]]["state"] == "failed"
        assert [still[t]["state"] for t in txns[1:]] == ["queued", "queued"]

        inst.cli_ok("outbox", "retry", txns[0])
        wait_outbox_empty(inst)
        seen = peer.wait_for_bodies(room_id, bodies)
        mine = [m.body for m in seen if m.body in bodies]
        assert mine == bodies, "not exactly once, in order, after the retry"
        assert all(sent_row(inst, room_id, t)["event_id"] for t in txns)
        until(
            inst,
            "outbox_updated: the retried item removed",
            lambda: any(
                e.get("type") == "outbox_updated"
                and e["item"]["txn_id"] == txns[0]
                and e.get("removed") is True
                for e in tail.events()
            ),
        )

        # Fail again, and this time cancel: what queued behind it goes, it never does.
        peer.set_power_levels(room_id, events_default=50)
        doomed, after = unique("doomed"), unique("after-cancel")
        doomed_txn = inst.send(room_id, doomed)
        until(
            inst,
            "the second failure",
            lambda: any(
                i["txn_id"] == doomed_txn and i["state"] == "failed" for i in inst.outbox()
            ),
        )
        # An edit of the failed message waits behind it, and goes with it.
        doomed_edit = inst.cli_txn("edit", room_id, doomed_txn, unique("doomed-edit"))
        after_txn = inst.send(room_id, after)
        assert {doomed_edit, after_txn} <= {i["txn_id"] for i in inst.outbox()}
        peer.set_power_levels(room_id, events_default=0)
        inst.cli_ok("outbox", "cancel", doomed_txn)
        assert doomed_edit not in {i["txn_id"] for i in inst.outbox()}, (
            "the edit of the cancelled message is still queued"
        )
        sent_row(inst, room_id, after_txn)
        wait_outbox_empty(inst)
        assert all(m["txn_id"] != doomed_txn for m in rows(inst, room_id)), (
            "the cancelled message's local echo is still there"
        )
        until(
            inst,
            "message_removed for the cancelled message in `skiffyd tail`",
            lambda: any(
                e.get("type") == "message_removed" and e.get("txn_id") == doomed_txn
                for e in tail.events()
            ),
        )
        seen = peer.wait_for_bodies(room_id, [after])
        assert doomed not in {m.body for m in seen}
        assert [m.body for m in seen].count(after) == 1
        assert not [e for e in peer.events(room_id) if relates(e).get("rel_type") == "m.replace"], (
            "an edit of the cancelled message reached the server"
        )

    # Retry or cancel of something not in the outbox: a clear error.
    for verb in ("retry", "cancel"):
        code = error_code(inst.cli("outbox", verb, doomed_txn), f"outbox {verb} of a gone item")
        assert code.startswith("SKIFFY_OUTBOX_") or code == ErrorCode.IPC_INVALID_ARGUMENT, code
    inst.cli_ok("outbox", "list")  # the human form answers too


def test_sending_into_a_room_the_account_was_kicked_from(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = ready.shared_room("Kicked out")
    peer.kick(room_id, ready.account.user_id, reason="testing")
    until(
        inst,
        "the kick in `skiffyd rooms`",
        lambda: (r := room_row(inst, room_id)) is None or r["membership"] == "leave",
    )
    body = unique("into the void")
    r = inst.cli("send", room_id, body)
    if r.returncode != 0:
        # Refusing up front is fine too, as long as nothing was queued.
        error_code(r, "send into a room the account left")
        assert inst.outbox() == []
    else:
        txn = r.stdout.strip()
        item = until(
            inst,
            "the message failed with 403",
            lambda: next(
                (i for i in inst.outbox() if i["state"] == "failed" and i["room_id"] == room_id),
                None,
            ),
        )
        assert item["txn_id"] == txn
        assert "403" in item["last_error"] or "M_FORBIDDEN" in item["last_error"]
        inst.cli_ok("outbox", "cancel", item["txn_id"])
        wait_outbox_empty(inst)
    assert body not in {m.body for m in peer.messages(room_id)}


def test_commands_on_a_pending_message_use_its_event_id(
    own_synapse: Synapse,
    make_instance: Callable[..., SkiffyInstance],
    make_peer: Callable[..., Peer],
) -> None:
    """Edit, react, reply, thread, redact, read: queued while the server is down,
    pointing at a message that has no event id yet; sent against it once it has."""
    hs = own_synapse
    account = hs.register_account(f"skiffy-{secrets.token_hex(4)}", secrets.token_urlsafe(18))
    inst = make_instance()
    inst.login_ready(hs.base_url, account.user_id, account.password)
    peer = make_peer(hs=hs)
    me = make_peer(account=account, hs=hs)
    room_id = peer.create_room("Pending targets", invite=[account.user_id])
    inst.join_invited(room_id)
    theirs = peer.send_text(room_id, unique("read up to here"))
    wait_daemon_sees(inst, room_id, [theirs])

    hs.stop()
    inst.wait_state("offline", "connecting", timeout=60)
    first, edited, second = unique("first"), unique("first-edited"), unique("second")
    reply, in_thread = unique("reply"), unique("in-thread")
    inst.cli_ok("read", room_id, theirs)
    first_txn = inst.send(room_id, first)
    edit_txn = inst.cli_txn("edit", room_id, first_txn, edited, "--plain")
    react_txn = inst.cli_txn("react", room_id, first_txn, "🎉")
    inst.cli_txn("react", room_id, first_txn, "👀")
    inst.cli_txn("unreact", room_id, first_txn, "👀")
    reply_txn = inst.cli_txn("send", room_id, reply, "--reply-to", first_txn)
    thread_txn = inst.cli_txn("send", room_id, in_thread, "--thread", first_txn)
    second_txn = inst.send(room_id, second)
    inst.cli_txn("redact", room_id, second_txn, "--reason", "never mind")
    queued = [first_txn, edit_txn, react_txn, reply_txn, thread_txn, second_txn]
    assert len(set(queued)) == len(queued)

    pending = inst.outbox()
    for item in pending:
        assert set(item) >= OUTBOX_FIELDS, sorted(OUTBOX_FIELDS - set(item))
        assert item["state"] in ("queued", "in_flight"), item
        assert item["room_id"] == room_id
    kinds = {i["kind"] for i in pending}
    assert {"event", "receipt"} <= kinds, kinds
    receipt = next(i for i in pending if i["kind"] == "receipt")
    assert receipt["target"] == theirs
    by_txn = {i["txn_id"]: i for i in pending}
    # What the edit and the reaction point at (checked last, below).
    targets = {t: by_txn[t]["target"] for t in (edit_txn, react_txn)}
    assert {edit_txn, react_txn, reply_txn, thread_txn} <= {i["txn_id"] for i in pending}
    row = next(m for m in rows(inst, room_id) if m["txn_id"] == first_txn)
    assert row["status"] == "pending"
    assert row["event_id"] is None
    assert inst.status()["pending_outbox"] == len(pending)

    hs.start()
    inst.wait_state("ready", timeout=120)
    wait_outbox_empty(inst, timeout=120)

    events = peer.events(room_id)
    mine = [e for e in events if e["sender"] == account.user_id]
    originals = [e for e in mine if e["content"].get("body") == first]
    assert len(originals) == 1, "the first message was not delivered exactly once"
    first_id = originals[0]["event_id"]
    # No relation anywhere points at a txn id.
    for e in mine:
        rel = relates(e)
        assert str(rel.get("event_id", "$")).startswith("$"), e
        assert str(rel.get("m.in_reply_to", {}).get("event_id", "$")).startswith("$"), e

    edits = [e for e in mine if relates(e).get("rel_type") == "m.replace"]
    assert len(edits) == 1
    assert relates(edits[0])["event_id"] == first_id
    assert edits[0]["content"]["m.new_content"]["body"] == edited

    live_reactions = [e for e in mine if e["type"] == "m.reaction" and e["content"]]
    assert [relates(e) for e in live_reactions] == [
        {"rel_type": "m.annotation", "event_id": first_id, "key": "🎉"}
    ], "the reaction taken back while pending is still there"

    [reply_event] = [e for e in mine if e["content"].get("body") == reply]
    assert relates(reply_event)["m.in_reply_to"] == {"event_id": first_id}
    [thread_event] = [e for e in mine if e["content"].get("body") == in_thread]
    assert relates(thread_event)["rel_type"] == "m.thread"
    assert relates(thread_event)["event_id"] == first_id

    # The deleted message: never sent, or sent and redacted; its text is not readable.
    assert all(e["content"].get("body") != second for e in mine), "the deleted text is readable"
    for red in (e for e in mine if e["type"] == "m.room.redaction"):
        target = red.get("redacts") or red["content"].get("redacts")
        assert peer.event(room_id, target)["content"] == {}

    # In FIFO order: the edit, reaction, reply and thread after the message they point at.
    order = [e["event_id"] for e in mine]
    for e in (edits[0], live_reactions[0], reply_event, thread_event):
        assert order.index(e["event_id"]) > order.index(first_id)

    # The read marker queued offline reached the server.
    assert peer.read_receipts(room_id).get(account.user_id) == theirs
    assert (me.account_data("m.fully_read", room_id) or {}).get("event_id") == theirs

    row = until(
        inst,
        "the edit and reaction on the delivered message",
        lambda: (r := row_for(inst, room_id, first_id)) and r["edited"] and r["reactions"] and r,
    )
    assert (row["body"], row["txn_id"], row["status"]) == (edited, first_txn, "sent")
    assert row["reactions"] == {"🎉": 1}
    assert row["my_reactions"] == ["🎉"]

    # The rows of the reply and the thread message point at the event id too.
    def echo_references() -> bool:
        reply_row = row_for(inst, room_id, reply_event["event_id"]) or {}
        thread_row = row_for(inst, room_id, thread_event["event_id"]) or {}
        root_row = row_for(inst, room_id, first_id) or {}
        got = {
            "reply_to": reply_row.get("reply_to"),
            "content in_reply_to": reply_row.get("content", {})
            .get("m.relates_to", {})
            .get("m.in_reply_to", {})
            .get("event_id"),
            "thread_root": thread_row.get("thread_root"),
            "root thread_count": root_row.get("thread_count"),
            "root thread_latest": root_row.get("thread_latest"),
        }
        want = {
            "reply_to": first_id,
            "content in_reply_to": first_id,
            "thread_root": first_id,
            "root thread_count": 1,
            "root thread_latest": thread_event["event_id"],
        }
        assert got == want, f"`skiffyd messages` has {got}, the server {want}"
        return True

    until(inst, "the rows to point at the delivered message's event id", echo_references)
    assert targets == {edit_txn: first_txn, react_txn: first_txn}, (
        f"`outbox list` did not say what the pending edit and reaction point at: {targets}"
    )
    for m in rows(inst, room_id):
        if m["txn_id"] == second_txn:
            assert m["redacted"], "the deleted message is shown as a normal message"


# --------------------------------------------------------------- validation


def test_invalid_commands_fail_with_a_code_and_queue_nothing(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = ready.shared_room("Validation")
    theirs = peer.send_text(room_id, unique("not yours"))
    own = sent_row(inst, room_id, inst.send(room_id, unique("mine")))
    wait_daemon_sees(inst, room_id, [theirs])
    wait_outbox_empty(inst)
    before = [(m["event_id"], m["txn_id"]) for m in rows(inst, room_id)]
    too_big = "x" * 70_000

    cases: list[tuple[tuple[str, ...], str]] = [
        (("send", "not-a-room", "hi"), ErrorCode.IPC_INVALID_ARGUMENT),
        (("send", "!unknown-room:localhost", "hi"), ErrorCode.CACHE_UNKNOWN_ROOM),
        (("send", room_id, ""), ErrorCode.OUTBOX_EMPTY_BODY),
        (("send", room_id, "  \n\t "), ErrorCode.OUTBOX_EMPTY_BODY),
        (("send", room_id, too_big), ErrorCode.OUTBOX_TOO_LARGE),
        (("send", room_id, too_big, "--plain"), ErrorCode.OUTBOX_TOO_LARGE),
        (("edit", room_id, theirs, "changed"), ErrorCode.OUTBOX_NOT_YOURS),
        (("edit", room_id, own["event_id"], too_big), ErrorCode.OUTBOX_TOO_LARGE),
        (("edit", room_id, own["event_id"], " "), ErrorCode.OUTBOX_EMPTY_BODY),
        (("edit", "not-a-room", own["event_id"], "x"), ErrorCode.IPC_INVALID_ARGUMENT),
        (("redact", "not-a-room", theirs), ErrorCode.IPC_INVALID_ARGUMENT),
        (("react", "not-a-room", theirs, "👍"), ErrorCode.IPC_INVALID_ARGUMENT),
        (("react", room_id, theirs, ""), ErrorCode.IPC_INVALID_ARGUMENT),
        (("react", room_id, "not-an-event", "👍"), ErrorCode.IPC_INVALID_ARGUMENT),
        (("react", "!unknown-room:localhost", theirs, "👍"), ErrorCode.CACHE_UNKNOWN_ROOM),
        (("read", "!unknown-room:localhost"), ErrorCode.CACHE_UNKNOWN_ROOM),
        (("typing", "!unknown-room:localhost", "on"), ErrorCode.CACHE_UNKNOWN_ROOM),
        (("invite", room_id, "not-a-user"), ErrorCode.IPC_INVALID_ARGUMENT),
        (("kick", room_id, "bob"), ErrorCode.IPC_INVALID_ARGUMENT),
        (("ban", room_id, "@"), ErrorCode.IPC_INVALID_ARGUMENT),
        (("invite", "not-a-room", peer.user_id or ""), ErrorCode.IPC_INVALID_ARGUMENT),
        (("dm", "not-a-user"), ErrorCode.IPC_INVALID_ARGUMENT),
        (("create", "--invite", "nobody"), ErrorCode.IPC_INVALID_ARGUMENT),
        (("join", "not-a-room"), ErrorCode.IPC_INVALID_ARGUMENT),
        (("leave", "not-a-room"), ErrorCode.IPC_INVALID_ARGUMENT),
        (("forget", "not-a-room"), ErrorCode.IPC_INVALID_ARGUMENT),
        (("profile", "get", "bob"), ErrorCode.IPC_INVALID_ARGUMENT),
    ]
    for args, code in cases:
        shown = " ".join(a if len(a) < 40 else f"<{len(a)} chars>" for a in args)
        assert error_code(inst.cli(*args), f"skiffyd {shown}") == code, f"skiffyd {shown}"

    assert inst.outbox() == []
    assert inst.status()["pending_outbox"] == 0
    assert [(m["event_id"], m["txn_id"]) for m in rows(inst, room_id)] == before
    assert [e for e in peer.events(room_id) if e["sender"] == ready.account.user_id][-1][
        "event_id"
    ] == own["event_id"], "a refused command reached the server"

    # Just under the limit is fine, and arrives whole.
    big = "y" * 60_000
    big_row = sent_row(inst, room_id, inst.send(room_id, big))
    assert peer.event(room_id, big_row["event_id"])["content"]["body"] == big


def test_commands_while_logged_out_fail_cleanly(daemon: SkiffyInstance) -> None:
    for args in (
        ("edit", "!room:localhost", "$event", "x"),
        ("react", "!room:localhost", "$event", "👍"),
        ("read", "!room:localhost"),
        ("create", "--name", "x"),
        ("dm", "@someone:localhost"),
        ("profile", "get", "--json"),
        ("users", "search", "someone", "--json"),
        ("outbox", "list", "--json"),
    ):
        code = error_code(daemon.cli(*args), f"skiffyd {' '.join(args)} while logged out")
        assert code == ErrorCode.SESSION_NOT_LOGGED_IN, (args, code)
