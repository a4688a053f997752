"""The ``skiffyd`` command line: the one place where errors become words for people.

Every verb but ``run`` is a thin client of the running daemon over IPC.
Output: human text by default, ``--json`` for scripts (a public contract:
fields are only ever added). Exit status 0 on success, 1 on any error with
one line on stderr: ``skiffyd: <what went wrong> [<CODE>]``; ``skiffyd run``
exits 78 (EX_CONFIG) when a restart cannot help (no keyring, already running).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path  # noqa: TC003  (typer reads the annotations at run time)
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import msgspec
import typer

import ipc_schema as wire
from skiffyd.config import Paths
from skiffyd.errors import SkiffyError

if TYPE_CHECKING:
    from collections.abc import Callable

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    # A crash prints a plain traceback: never a rich one with local variables,
    # which could hold a password or a token.
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    help="skiffyd: a headless Matrix client daemon, and its command line.",
)

from skiffyd.cli import ops  # noqa: E402  (its verbs join the one app)

ops.register(app)

R = TypeVar("R", bound=wire.Result)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _fail(message: str, code: str | None = None, *, status: int = 1) -> NoReturn:
    line = f"skiffyd: {message}" + (f" [{code}]" if code else "")
    print(line.replace("\n", " "), file=sys.stderr)
    raise typer.Exit(status)


def _request(req: wire.Request, expect: type[R], *, timeout: float = 30.0) -> R:
    from skiffyd.ipc.client import DaemonClient

    try:
        with DaemonClient(Paths.from_env(), timeout=timeout) as client:
            result = client.request(req)
    except SkiffyError as exc:
        _fail(exc.message, exc.code)
    if not isinstance(result, expect):
        _fail(f"unexpected answer from the daemon: {type(result).__name__}")
    return result


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def _fmt_ts(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


@app.command()
def run() -> None:
    """Run the daemon in the foreground (what systemd or launchd starts)."""
    from skiffyd.entry import run_daemon

    raise typer.Exit(run_daemon())


@app.command()
def login(
    homeserver: Annotated[str, typer.Option(help="The homeserver URL, e.g. https://matrix.org")],
    user: Annotated[
        str | None, typer.Option(help="The Matrix user id (@name:server) or name")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    sso: Annotated[
        bool, typer.Option("--sso", help="Log in with the homeserver's single sign-on.")
    ] = False,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="With --sso: only print the URL.")
    ] = False,
    timeout: Annotated[
        int, typer.Option(min=10, max=3600, help="With --sso: seconds to wait for the browser.")
    ] = 300,
) -> None:
    """Ask the running daemon to log in. The password goes only to the homeserver."""
    if sso:
        _login_sso(homeserver, no_browser=no_browser, timeout=timeout)
        return
    if user is None:
        _fail("--user is needed (or --sso)")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        _fail("no password: pass --password-stdin and write it to standard input")
    else:
        password = typer.prompt("Password", hide_input=True)
    if not password:
        _fail("the password is empty")
    result = _request(
        wire.Login(homeserver=homeserver, user=user, password=password),
        wire.LoginResult,
        timeout=120.0,
    )
    print(f"logged in as {result.user_id} (device {result.device_id})")


def _login_sso(homeserver: str, *, no_browser: bool, timeout: int) -> None:
    import os
    import webbrowser

    started = _request(
        wire.SsoStart(homeserver=homeserver, timeout_s=timeout), wire.SsoStartResult, timeout=60.0
    )
    print(f"open: {started.url}", flush=True)
    has_desktop = sys.platform == "darwin" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if not no_browser and has_desktop:
        webbrowser.open(started.url)
    result = _request(
        wire.SsoFinish(flow_id=started.flow_id),
        wire.LoginResult,
        timeout=started.timeout_s + 60.0,
    )
    print(f"logged in as {result.user_id} (device {result.device_id})")


@app.command()
def logout(
    keep_cache: Annotated[
        bool, typer.Option("--keep-cache", help="Keep the (encrypted) cache files on disk")
    ] = False,
    discard_outbox: Annotated[
        bool,
        typer.Option(
            "--discard-outbox",
            help="Log out even though messages wait in the outbox (they are lost)",
        ),
    ] = False,
) -> None:
    """Log out: ends the session on the server and deletes local credentials and cache.

    Refused while messages wait in the outbox, unless --discard-outbox.
    """
    _request(
        wire.Logout(keep_cache=keep_cache, discard_outbox=discard_outbox),
        wire.OkResult,
        timeout=60.0,
    )
    print("logged out")


@app.command("forget-account")
def forget_account(
    user_id: Annotated[str, typer.Argument(help="The account's Matrix id (@user:server)")],
    discard_outbox: Annotated[
        bool,
        typer.Option(
            "--discard-outbox",
            help="Forget it even though unsent messages wait for its next login (they are lost)",
        ),
    ] = False,
) -> None:
    """Remove the data kept on this machine for an account that is not logged in.

    Its cache, crypto store and credentials record. Refused while a revoked
    session's unsent messages wait for the account's next login, unless
    --discard-outbox.
    """
    result = _request(
        wire.ForgetAccount(user_id=user_id, discard_outbox=discard_outbox),
        wire.ForgetAccountResult,
        timeout=60.0,
    )
    if not result.found:
        print("nothing was kept for that account")
        return
    print("forgotten" + (f" ({result.discarded} unsent discarded)" if result.discarded else ""))


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """The daemon's state, account and sync progress."""
    result = _request(wire.Status(), wire.StatusResult)
    if as_json:
        data = msgspec.to_builtins(result)
        data.pop("type", None)
        _print_json(data)
        return
    print(f"state:     {result.state}")
    if result.user_id:
        print(f"account:   {result.user_id} on {result.homeserver} (device {result.device_id})")
    print(f"outbox:    {result.pending_outbox} pending")
    kept = result.kept_outbox
    if kept is not None and kept.user_id != result.user_id:
        print(
            f"kept:      {kept.items} unsent of {kept.user_id}, for its next login "
            f"(or `skiffyd forget-account {kept.user_id} --discard-outbox`)"
        )
    if result.last_error:
        print(f"problem:   {result.last_error}")


@app.command()
def rooms(as_json: JsonOpt = False) -> None:
    """The rooms the account is in or invited to, from the cache."""
    result = _request(wire.Rooms(), wire.RoomsResult)
    if as_json:
        _print_json(result.rooms)
        return
    for room in result.rooms:
        flags = ("🔒 " if room.is_encrypted else "") + (
            "(invited) " if room.membership == "invite" else ""
        )
        unread = f" [{room.unread_count} unread]" if room.unread_count else ""
        print(f"{room.room_id}  {flags}{room.name} · {room.member_count} members{unread}")


@app.command()
def join(room: Annotated[str, typer.Argument(help="A room id (!…) or alias (#…)")]) -> None:
    """Join a room, or accept an invite to it."""
    result = _request(wire.Join(room=room), wire.JoinResult, timeout=60.0)
    print(result.room_id)


@app.command()
def messages(
    room: Annotated[str, typer.Argument(help="The room id")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest last")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """A room's latest messages from the cache, oldest first."""
    result = _request(wire.Messages(room_id=room, limit=limit), wire.MessagesResult)
    if as_json:
        _print_json(result.messages)
        return
    if result.gaps and result.gaps[0].before == (
        result.messages[0].event_id if result.messages else None
    ):
        print("… earlier history not fetched yet: `skiffyd backfill ROOM`")
    for m in result.messages:
        marks: list[str] = [m.status] if m.status != "sent" else []
        marks += ["edited"] if m.edited else []
        marks += [f"{k} {n}" for k, n in m.reactions.items()]
        marks += [f"{m.thread_count} replies"] if m.thread_count else []
        tail = f" ({', '.join(marks)})" if marks else ""
        if m.type == "m.room.message" or m.type == "m.room.encrypted":
            print(f"{_fmt_ts(m.ts)} {m.sender}: {m.body}{tail}")
        else:
            print(f"{_fmt_ts(m.ts)} * {m.body}{tail}")


@app.command()
def members(
    room: Annotated[str, typer.Argument(help="The room id")],
    include_left: Annotated[
        bool, typer.Option("--all", help="Include who left or was banned")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """A room's members, from the cache."""
    result = _request(wire.Members(room_id=room, all=include_left), wire.MembersResult)
    if as_json:
        _print_json(result.members)
        return
    for mb in result.members:
        name = f" ({mb.display_name})" if mb.display_name else ""
        print(f"{mb.user_id}{name} {mb.membership}")


@app.command()
def backfill(
    room: Annotated[str, typer.Argument(help="The room id")],
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Events to fetch at most")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Fetch earlier history from the homeserver into the cache."""
    result = _request(wire.Backfill(room_id=room, limit=limit), wire.BackfillResult, timeout=300.0)
    if as_json:
        data = msgspec.to_builtins(result)
        data.pop("type", None)
        _print_json(data)
        return
    more = "the room's start reached" if result.reached_start else "more history remains"
    print(f"{result.added} messages added ({result.fetched} events fetched); {more}")


def _print_txn(result: wire.SendResult, as_json: bool) -> None:
    if as_json:
        _print_json({"txn_id": result.txn_id})
    else:
        print(result.txn_id)


@app.command()
def send(
    room: Annotated[str, typer.Argument(help="The room id")],
    text: Annotated[str, typer.Argument(help="The message (Markdown)")],
    plain: Annotated[bool, typer.Option("--plain", help="Send as plain text, no Markdown")] = False,
    notice: Annotated[bool, typer.Option("--notice", help="Send as a notice (m.notice)")] = False,
    emote: Annotated[bool, typer.Option("--emote", help="Send as an emote (/me)")] = False,
    reply_to: Annotated[
        str | None, typer.Option(help="Reply to this event (or pending txn)")
    ] = None,
    thread: Annotated[
        str | None, typer.Option(help="Send in the thread of this root event")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a message; prints its transaction id at once. The outbox delivers it."""
    if notice and emote:
        _fail("--notice and --emote exclude each other")
    msgtype = "m.notice" if notice else "m.emote" if emote else "m.text"
    result = _request(
        wire.Send(
            room_id=room,
            body=text,
            msgtype=msgtype,
            markdown=not plain,
            reply_to=reply_to,
            thread_root=thread,
        ),
        wire.SendResult,
    )
    _print_txn(result, as_json)


@app.command()
def edit(
    room: Annotated[str, typer.Argument(help="The room id")],
    target: Annotated[str, typer.Argument(help="Your message's event id, or its pending txn id")],
    text: Annotated[str, typer.Argument(help="The new text (Markdown)")],
    plain: Annotated[bool, typer.Option("--plain", help="No Markdown")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Edit one of your messages."""
    result = _request(
        wire.Edit(room_id=room, target=target, body=text, markdown=not plain), wire.SendResult
    )
    _print_txn(result, as_json)


@app.command()
def redact(
    room: Annotated[str, typer.Argument(help="The room id")],
    target: Annotated[str, typer.Argument(help="The event id, or a pending txn id")],
    reason: Annotated[str | None, typer.Option(help="Why (shown to others)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete (redact) an event; a message not sent yet is simply taken back."""
    _print_txn(
        _request(wire.Redact(room_id=room, target=target, reason=reason), wire.SendResult), as_json
    )


@app.command()
def react(
    room: Annotated[str, typer.Argument(help="The room id")],
    target: Annotated[str, typer.Argument(help="The event id, or a pending txn id")],
    key: Annotated[str, typer.Argument(help="The reaction, e.g. 👍")],
    as_json: JsonOpt = False,
) -> None:
    """React to an event."""
    _print_txn(_request(wire.React(room_id=room, target=target, key=key), wire.SendResult), as_json)


@app.command()
def unreact(
    room: Annotated[str, typer.Argument(help="The room id")],
    target: Annotated[str, typer.Argument(help="The event id")],
    key: Annotated[str, typer.Argument(help="The reaction to remove")],
    as_json: JsonOpt = False,
) -> None:
    """Remove your reaction."""
    _print_txn(
        _request(wire.Unreact(room_id=room, target=target, key=key), wire.SendResult), as_json
    )


@app.command()
def read(
    room: Annotated[str, typer.Argument(help="The room id")],
    event_id: Annotated[
        str | None, typer.Argument(help="Up to this event (default: the latest)")
    ] = None,
) -> None:
    """Mark a room read (read receipt and fully-read marker)."""
    _request(wire.MarkRead(room_id=room, event_id=event_id), wire.OkResult)


@app.command()
def typing(
    room: Annotated[str, typer.Argument(help="The room id")],
    state: Annotated[str, typer.Argument(help="on or off")],
) -> None:
    """Tell the room you are typing, or stopped."""
    if state not in ("on", "off"):
        _fail("typing takes on or off")
    _request(wire.SetTyping(room_id=room, typing=state == "on"), wire.OkResult)


@app.command()
def create(
    name: Annotated[str | None, typer.Option(help="The room name")] = None,
    topic: Annotated[str | None, typer.Option(help="The topic")] = None,
    public: Annotated[bool, typer.Option("--public", help="Anyone can join")] = False,
    encrypted: Annotated[bool, typer.Option("--encrypted", help="Turn on encryption")] = False,
    invite: Annotated[list[str] | None, typer.Option(help="Invite this user (repeatable)")] = None,
    direct: Annotated[
        bool, typer.Option("--direct", help="A direct chat with the one invitee")
    ] = False,
) -> None:
    """Create a room; prints its id."""
    result = _request(
        wire.CreateRoom(
            name=name,
            topic=topic,
            public=public,
            encrypted=encrypted,
            invite=invite or [],
            direct=direct,
        ),
        wire.JoinResult,
        timeout=60.0,
    )
    print(result.room_id)


@app.command()
def leave(room: Annotated[str, typer.Argument(help="The room id")]) -> None:
    """Leave a room (or reject an invite)."""
    _request(wire.Leave(room_id=room), wire.OkResult, timeout=60.0)


@app.command()
def forget(room: Annotated[str, typer.Argument(help="The room id")]) -> None:
    """Leave if needed, forget the room on the server, and drop it from the cache."""
    _request(wire.Forget(room_id=room), wire.OkResult, timeout=60.0)


@app.command()
def invite(
    room: Annotated[str, typer.Argument(help="The room id")],
    user: Annotated[str, typer.Argument(help="The user id")],
) -> None:
    """Invite a user."""
    _request(wire.Invite(room_id=room, user_id=user), wire.OkResult, timeout=60.0)


@app.command()
def kick(
    room: Annotated[str, typer.Argument(help="The room id")],
    user: Annotated[str, typer.Argument(help="The user id")],
    reason: Annotated[str | None, typer.Option(help="Why")] = None,
) -> None:
    """Remove a user from a room."""
    _request(wire.Kick(room_id=room, user_id=user, reason=reason), wire.OkResult, timeout=60.0)


@app.command()
def ban(
    room: Annotated[str, typer.Argument(help="The room id")],
    user: Annotated[str, typer.Argument(help="The user id")],
    reason: Annotated[str | None, typer.Option(help="Why")] = None,
) -> None:
    """Ban a user from a room."""
    _request(wire.Ban(room_id=room, user_id=user, reason=reason), wire.OkResult, timeout=60.0)


@app.command()
def dm(user: Annotated[str, typer.Argument(help="The user id")]) -> None:
    """Open the direct chat with a user (reused if one exists, else created); prints its id."""
    print(_request(wire.OpenDirect(user_id=user), wire.JoinResult, timeout=60.0).room_id)


profile_app = typer.Typer(help="Profiles: yours and others'.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")


@profile_app.command("get")
def profile_get(
    user: Annotated[str | None, typer.Argument(help="A user id (default: you)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """A profile's display name and avatar."""
    p = _request(wire.GetProfile(user_id=user), wire.ProfileResult, timeout=60.0).profile
    if as_json:
        _print_json(p)
    else:
        print(f"{p.user_id}: {p.display_name or '(no display name)'}")


@profile_app.command("set-name")
def profile_set_name(name: Annotated[str, typer.Argument(help="The new display name")]) -> None:
    """Set your display name."""
    _request(wire.SetDisplayName(display_name=name), wire.OkResult, timeout=60.0)


users_app = typer.Typer(help="The homeserver's user directory.", no_args_is_help=True)
app.add_typer(users_app, name="users")


@users_app.command("search")
def users_search(
    query: Annotated[str, typer.Argument(help="Part of a name or user id")],
    limit: Annotated[int, typer.Option(min=1, max=100)] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Search the user directory."""
    result = _request(wire.SearchUsers(query=query, limit=limit), wire.UsersResult, timeout=60.0)
    if as_json:
        _print_json({"results": result.results, "limited": result.limited})
        return
    for u in result.results:
        print(f"{u.user_id}" + (f" ({u.display_name})" if u.display_name else ""))


outbox_app = typer.Typer(help="What is waiting to be sent.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")


@outbox_app.command("list")
def outbox_list(as_json: JsonOpt = False) -> None:
    """Pending and failed items, oldest first."""
    items = _request(wire.OutboxList(), wire.OutboxResult).items
    if as_json:
        _print_json(items)
        return
    for i in items:
        error = f" — {i.last_error}" if i.last_error else ""
        print(f"{i.txn_id} {i.room_id} {i.kind} {i.state} (tries {i.attempts}){error}")


@outbox_app.command("retry")
def outbox_retry(txn: Annotated[str, typer.Argument(help="The txn id of a failed item")]) -> None:
    """Put a failed item back in the queue."""
    _request(wire.OutboxRetry(txn_id=txn), wire.OkResult)


@outbox_app.command("cancel")
def outbox_cancel(txn: Annotated[str, typer.Argument(help="The txn id")]) -> None:
    """Take back an item that is queued or failed (and what depends on it)."""
    _request(wire.OutboxCancel(txn_id=txn), wire.OkResult)


@app.command()
def devices(
    user: Annotated[
        str | None, typer.Argument(help="Whose devices (default: the account's own)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """A user's devices, with their keys and trust."""
    result = _request(wire.Devices(user_id=user), wire.DevicesResult)
    if as_json:
        _print_json(result.devices)
        return
    for d in result.devices:
        own = " (this device)" if d.own else ""
        name = f" {d.display_name}" if d.display_name else ""
        print(f"{d.device_id}{name} {d.trust} ed25519:{d.ed25519}{own}")


verify_app = typer.Typer(
    help="Emoji (SAS) verification of another device; a verified device is trusted.",
    no_args_is_help=True,
)
app.add_typer(verify_app, name="verify")


def _print_verification(v: wire.VerificationInfo, as_json: bool) -> None:
    if as_json:
        _print_json(v)
        return
    print(f"{v.transaction_id} {v.user_id} {v.device_id} {v.state}")
    if v.emojis:
        print("  " + "  ".join(f"{e.emoji} {e.name}" for e in v.emojis))
        print("  " + " ".join(str(n) for n in v.decimals))
    if v.cancel_reason:
        print(f"  canceled: {v.cancel_reason}")


@verify_app.command("list")
def verify_list(as_json: JsonOpt = False) -> None:
    """Verifications under way, with the emojis to compare once they are ready."""
    found = _request(wire.Verifications(), wire.VerificationsResult).verifications
    if as_json:
        _print_json(found)
        return
    for v in found:
        _print_verification(v, False)


@verify_app.command("start")
def verify_start(
    user: Annotated[str, typer.Argument(help="The user id")],
    device: Annotated[str, typer.Argument(help="The device id (`skiffyd devices USER`)")],
    as_json: JsonOpt = False,
) -> None:
    """Start verifying one of USER's devices."""
    _verify_step(wire.VerifyStart(user_id=user, device_id=device), as_json)


def _verify_step(req: wire.Request, as_json: bool) -> None:
    _print_verification(_request(req, wire.VerificationResult).verification, as_json)


@verify_app.command("accept")
def verify_accept(
    txn: Annotated[str, typer.Argument(help="The transaction id")], as_json: JsonOpt = False
) -> None:
    """Accept a verification another device started."""
    _verify_step(wire.VerifyAccept(transaction_id=txn), as_json)


@verify_app.command("confirm")
def verify_confirm(
    txn: Annotated[str, typer.Argument(help="The transaction id")], as_json: JsonOpt = False
) -> None:
    """The emojis match on both screens: trust the device once the other side agrees."""
    _verify_step(wire.VerifyConfirm(transaction_id=txn), as_json)


@verify_app.command("cancel")
def verify_cancel(
    txn: Annotated[str, typer.Argument(help="The transaction id")], as_json: JsonOpt = False
) -> None:
    """Stop a verification (say so when the emojis differ)."""
    _verify_step(wire.VerifyCancel(transaction_id=txn), as_json)


keys_app = typer.Typer(
    help="Room keys: export and import (Element's passphrase-protected format).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")

#: Sessions per import request (each well under the IPC request limit).
IMPORT_BATCH = 100


def _passphrase(*, confirm: bool) -> str:
    """From standard input: a line when piped, a hidden prompt on a terminal."""
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass("Passphrase: ")
        if confirm and getpass.getpass("Again: ") != value:
            _fail("the passphrases differ")
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        _fail("an empty passphrase: write it to standard input")
    return value


@keys_app.command("export")
def keys_export(
    file: Annotated[Path, typer.Argument(help="Where to write the key file", dir_okay=False)],
) -> None:
    """Write every room key to FILE, encrypted with a passphrase read from stdin."""
    from skiffyd.core import key_export

    passphrase = _passphrase(confirm=True)
    sessions = _request(wire.KeysExport(), wire.KeysExportResult, timeout=120.0).sessions
    text = key_export.encrypt(msgspec.json.encode(sessions), passphrase)
    try:
        # The file holds keys: only its owner may read it, from the start.
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
    except OSError as exc:
        _fail(f"cannot write {file}: {exc.strerror}")
    print(f"exported {len(sessions)} room keys to {file}")


@keys_app.command("import")
def keys_import(
    file: Annotated[
        Path,
        typer.Argument(help="A key file (Element's export format)", exists=True, dir_okay=False),
    ],
) -> None:
    """Add the room keys in FILE (passphrase from stdin); messages they open are read."""
    from skiffyd.core import key_export

    passphrase = _passphrase(confirm=False)
    try:
        sessions = msgspec.json.decode(key_export.decrypt(file.read_text(), passphrase))
    except (ValueError, UnicodeDecodeError, msgspec.DecodeError):
        _fail(
            "the file does not open with this passphrase, or is not a key export",
            wire.ErrorCode.CRYPTO_BAD_KEY_FILE,
        )
    if not isinstance(sessions, list) or not all(isinstance(x, dict) for x in sessions):
        _fail("the key file holds no list of keys", wire.ErrorCode.CRYPTO_BAD_KEY_FILE)
    imported = skipped = decrypted = 0
    for i in range(0, len(sessions), IMPORT_BATCH):
        result = _request(
            wire.KeysImport(sessions=sessions[i : i + IMPORT_BATCH]),
            wire.KeysImportResult,
            timeout=120.0,
        )
        imported += result.imported
        skipped += result.skipped
        decrypted += result.decrypted
    print(f"imported {imported} room keys ({skipped} known or unusable); {decrypted} messages read")


def _describe(event: wire.Event) -> str:
    match event:
        case wire.MessageAdded(message=m) | wire.MessageUpdated(message=m):
            verb = "message" if isinstance(event, wire.MessageAdded) else "updated"
            return f"#{event.seq} {verb} {m.room_id} {m.sender}: {m.body} ({m.status})"
        case wire.RoomUpdated(room=r):
            return f"#{event.seq} room {r.room_id} {r.name} ({r.membership})"
        case wire.MemberUpdated(member=mb):
            return f"#{event.seq} member {mb.room_id} {mb.user_id} {mb.membership}"
        case wire.SessionStateChanged():
            return f"-- session {event.state}"
        case wire.Typing():
            who = ", ".join(event.user_ids) or "nobody"
            return f"-- typing in {event.room_id}: {who}"
        case wire.VerificationUpdated(verification=v):
            emojis = " ".join(e.emoji for e in v.emojis)
            return f"-- verification {v.transaction_id} {v.device_id} {v.state} {emojis}".rstrip()
        case wire.MessageRemoved():
            return f"#{event.seq} removed {event.room_id} {event.event_id or event.txn_id}"
        case wire.OutboxUpdated(item=i):
            state = "done" if event.removed else i.state
            return f"#{event.seq} outbox {i.txn_id} {state}" + (
                f": {i.last_error}" if i.last_error else ""
            )
        case wire.SessionExpired():
            return f"-- session expired for {event.user_id}: {event.message}"


@app.command()
def tail(
    as_json: JsonOpt = False,
    since: Annotated[
        int | None, typer.Option(help="Replay the changes after this seq first.")
    ] = None,
) -> None:
    """Follow published events (one JSON object per line with --json), gap-free."""
    from skiffyd.ipc.client import EventSubscriber

    render: Callable[[wire.Event], str] = (
        (lambda e: msgspec.json.encode(e).decode()) if as_json else _describe
    )
    try:
        with EventSubscriber(Paths.from_env()) as subscriber:
            for event in subscriber.iter_events(since_seq=since):
                sys.stdout.write(render(event) + "\n")
                sys.stdout.flush()
    except SkiffyError as exc:
        _fail(exc.message, exc.code)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except BrokenPipeError:
        raise typer.Exit(0) from None


@app.command("schema")
def schema() -> None:
    """Print the IPC protocol's JSON Schema."""
    print(json.dumps(wire.export_json_schema(), indent=2, sort_keys=True))


def main() -> None:
    app()
