"""``python -m skiffyd.devenv.demo`` (``make demo``): skiffyd against an embedded default.

Starts, each in a throwaway directory and each stopped by its PID on exit:

1. a Synapse on 127.0.0.1 with two accounts, ``demo`` and ``friend``;
2. a private Secret Service (gnome-keyring on its own D-Bus session bus; the
   demo never touches your real keyring);
3. ``skiffyd run`` with its own XDG directories, logged in as ``demo`` and
   joined to the room "Welcome to skiffyd", where ``friend`` (a matrix-nio
   client) has already said a few things.

It then prints ``skiffyd status``, ``rooms`` and ``messages``, the
environment to paste into another terminal to use the CLI against this
daemon, and follows ``skiffyd tail`` while the friend writes every few
seconds. Ctrl-C (or SIGTERM) stops everything.

``--seconds N`` stops by itself after N seconds of tail; ``--no-tail`` stops
right after the printout (both for smoke tests); ``--keep`` keeps the data.
"""

from __future__ import annotations

import argparse
import itertools
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from skiffyd.devenv.instance import InstanceError, SkiffyInstance
from skiffyd.devenv.peer import Peer
from skiffyd.devenv.procs import repo_root, stop_process
from skiffyd.devenv.secret_service import SecretService
from skiffyd.devenv.synapse import Synapse
from skiffyd.devenv.wait import wait_for

if TYPE_CHECKING:
    from types import FrameType

ROOM_NAME = "Welcome to skiffyd"
ROOM_TOPIC = "A throwaway room on a local Synapse. Try: skiffyd send ROOM 'hello'"
GREETINGS = (
    "Hi! I am friend, a matrix-nio client on the other side of this room.",
    "skiffyd keeps these messages in an encrypted SQLite cache.",
    "Every UI reads from that cache, so this works offline too.",
)
CHATTER = (
    "Still here.",
    "Try `skiffyd send` from another terminal; I will see it.",
    "Each line you see here came through /sync, the cache and the event socket.",
    "kill -9 the daemon and start it again: it resumes from its sync token.",
)


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _make_root() -> Path:
    """Under ./.demo/ in the checkout when its paths are short enough, else /tmp."""
    base = repo_root() / ".demo"
    base.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    # The daemon's sockets live in <root>/skiffy/run/skiffyd/: keep them short.
    if len(str(root)) > 60:
        shutil.rmtree(root)
        root = Path(tempfile.mkdtemp(prefix="skiffy-demo-", dir="/tmp"))
    return root


def _ignore_signals() -> None:
    # Cleanup must finish: a second Ctrl-C must not leave processes behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _show(inst: SkiffyInstance, *args: str) -> None:
    print(f"\n$ skiffyd {shlex.join(args)}", flush=True)
    r = inst.cli(*args)
    sys.stdout.write(r.stdout)
    if r.returncode != 0:
        sys.stdout.write(r.stderr)
    sys.stdout.flush()


def _paste_block(inst: SkiffyInstance, room_id: str) -> str:
    names = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR")
    exports = " \\\n  ".join(f"{n}={shlex.quote(inst.env[n])}" for n in names)
    cli = shlex.quote(inst.command[0])
    return (
        "\nTo use this daemon from another terminal, paste:\n\n"
        f"export {exports}\n"
        f"alias skiffyd={cli}\n"
        "skiffyd status\n"
        "skiffyd rooms\n"
        f"skiffyd messages {shlex.quote(room_id)}\n"
        f"skiffyd send {shlex.quote(room_id)} 'hello from the other terminal'\n"
        "skiffyd tail --json\n"
    )


def run(seconds: float | None, tail: bool, keep: bool) -> int:
    root = _make_root()
    with ExitStack() as stack:
        if not keep:
            stack.callback(shutil.rmtree, root, True)
        stack.callback(say, "stopped everything")
        try:
            return _run(stack, root, seconds, tail, keep)
        finally:
            _ignore_signals()


def _run(stack: ExitStack, root: Path, seconds: float | None, tail: bool, keep: bool) -> int:
    say(f"working in {root}")
    hs = Synapse(root / "synapse")
    stack.callback(hs.stop)
    took = hs.start()
    say(f"Synapse is up at {hs.base_url} ({took:.1f} s)")
    demo = hs.register_account("demo", secrets.token_urlsafe(18))
    friend_account = hs.register_account("friend", secrets.token_urlsafe(18))

    friend = Peer.logged_in(hs.base_url, friend_account.user_id, friend_account.password)
    stack.callback(friend.close)
    room_id = friend.create_room(ROOM_NAME, ROOM_TOPIC, invite=[demo.user_id])
    for line in GREETINGS:
        friend.send_text(room_id, line)
    say(f"{friend_account.user_id} created {room_id!r} and invited {demo.user_id}")

    ss = SecretService()
    stack.callback(ss.stop)
    took = ss.start()
    say(f"a private Secret Service is up in {ss.directory} ({took:.2f} s)")

    try:
        inst = SkiffyInstance(root / "skiffy", env=ss.env())
    except InstanceError:
        inst = SkiffyInstance(Path(tempfile.mkdtemp(prefix="sk-demo-")), env=ss.env())
        if not keep:
            stack.callback(shutil.rmtree, inst.root, True)
    stack.callback(inst.terminate)
    inst.start()
    say(f"skiffyd run is up (pid {inst.pid}); logging in as {demo.user_id}")
    inst.login_ready(hs.base_url, demo.user_id, demo.password)
    inst.join_invited(room_id)
    wait_for(
        lambda: len(inst.messages(room_id)) >= len(GREETINGS),
        timeout=30,
        what="the greetings in the cache",
        describe=inst.log_tail,
    )

    _show(inst, "status")
    _show(inst, "rooms")
    _show(inst, "messages", room_id)
    print(_paste_block(inst, room_id), flush=True)
    say(f"the daemon's log is {inst.log_path}")

    if not tail:
        return 0
    print("\n$ skiffyd tail", flush=True)
    follower = subprocess.Popen(
        [*inst.command, "tail"],
        env=inst.env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    stack.callback(stop_process, follower, timeout=5)
    say(
        "following events; friend writes every 5 s. "
        + ("Ctrl-C stops everything." if seconds is None else f"Stopping in {seconds:g} s.")
    )
    deadline = None if seconds is None else time.monotonic() + seconds
    chatter = itertools.cycle(CHATTER)
    next_message = time.monotonic() + 1.0
    while deadline is None or time.monotonic() < deadline:
        if follower.poll() is not None:
            say(f"skiffyd tail exited with status {follower.returncode}")
            return 1
        if time.monotonic() >= next_message:
            friend.send_text(room_id, next(chatter))
            next_message = time.monotonic() + 5.0
        time.sleep(0.1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skiffyd.devenv.demo", description=__doc__)
    parser.add_argument("--seconds", type=float, help="stop after following events this long")
    parser.add_argument("--no-tail", action="store_true", help="stop after the printout")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(argv)
    # Ctrl-C and SIGTERM both unwind through the cleanup, even when started
    # with SIGINT ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args.seconds, not args.no_tail, args.keep)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
