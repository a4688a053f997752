"""Bad input on the command socket gets error replies; the daemon keeps serving.

A raw pynng Req0 client, not skiffyd's client library, so nothing here is
filtered before it reaches the daemon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pynng
import pytest

from ipc_schema import (
    MAX_REQUEST_BYTES,
    ErrorCode,
    Reply,
    Send,
    Status,
    StatusResult,
)

if TYPE_CHECKING:
    from skiffyd.devenv.instance import SkiffyInstance

pytestmark = pytest.mark.integration


def raw_request(inst: SkiffyInstance, frame: bytes, timeout_ms: int = 10_000) -> Reply | None:
    """Send one frame; the decoded reply, or None if none came in time."""
    address = f"ipc://{inst.paths.command_socket}"
    with pynng.Req0(dial=address, recv_timeout=timeout_ms, send_timeout=timeout_ms) as sock:
        sock.send(frame)
        try:
            data = sock.recv()
        except pynng.Timeout:
            return None
    return msgspec.msgpack.decode(data, type=Reply)


def error_code(reply: Reply | None) -> str | None:
    assert reply is not None, "no reply"
    assert reply.result is None, reply
    assert reply.error is not None, reply
    assert reply.error.message
    return reply.error.code


def assert_still_serving(inst: SkiffyInstance) -> None:
    reply = raw_request(inst, msgspec.msgpack.encode(Status()))
    assert reply is not None
    assert isinstance(reply.result, StatusResult), reply
    assert reply.result.pid == inst.pid
    assert inst.cli("status", "--json").returncode == 0


enc = msgspec.msgpack.encode

BAD_FRAMES = {
    "garbage": (b"\xc1\xc1 this is not msgpack \xff", {ErrorCode.IPC_MALFORMED}),
    "empty": (b"", {ErrorCode.IPC_MALFORMED}),
    "not a map": (enc([1, 2, 3]), {ErrorCode.IPC_MALFORMED}),
    "no cmd": (
        enc({"room_id": "!x:localhost"}),
        {ErrorCode.IPC_MALFORMED, ErrorCode.IPC_UNKNOWN_COMMAND},
    ),
    "unknown cmd": (enc({"cmd": "frobnicate"}), {ErrorCode.IPC_UNKNOWN_COMMAND}),
    "wrong type": (
        enc({"cmd": "messages", "room_id": 42}),
        {ErrorCode.IPC_MALFORMED, ErrorCode.IPC_INVALID_ARGUMENT},
    ),
    "missing field": (
        enc({"cmd": "send", "room_id": "!x:localhost"}),
        {ErrorCode.IPC_MALFORMED, ErrorCode.IPC_INVALID_ARGUMENT},
    ),
    "truncated": (enc(Status())[:-3], {ErrorCode.IPC_MALFORMED}),
    # {"cmd": "statu\x92"}: well-formed msgpack around a string that is not UTF-8.
    "invalid utf-8": (b"\x81\xa3cmd\xa6statu\x92", {ErrorCode.IPC_MALFORMED}),
    "invalid utf-8 key": (
        b"\x81\xa3c\xffd\xa6status",
        {ErrorCode.IPC_MALFORMED, ErrorCode.IPC_UNKNOWN_COMMAND},
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_bad_frames_get_error_replies(daemon: SkiffyInstance, name: str) -> None:
    frame, codes = BAD_FRAMES[name]
    assert error_code(raw_request(daemon, frame)) in codes
    assert_still_serving(daemon)


def test_a_frame_over_the_limit_gets_too_large(daemon: SkiffyInstance) -> None:
    frame = enc(Send(room_id="!x:localhost", body="x" * MAX_REQUEST_BYTES))
    assert len(frame) > MAX_REQUEST_BYTES
    assert error_code(raw_request(daemon, frame)) == ErrorCode.IPC_TOO_LARGE
    assert_still_serving(daemon)


def test_a_huge_frame_does_not_hurt_the_daemon(daemon: SkiffyInstance) -> None:
    # Far over any limit: the daemon may answer TOO_LARGE or drop the
    # connection (nng's recv_max_size), but it must not buffer it or die.
    frame = b"\x00" * (64 * 1024 * 1024)
    reply = raw_request(daemon, frame, timeout_ms=5_000)
    if reply is not None:
        assert error_code(reply) == ErrorCode.IPC_TOO_LARGE
    assert_still_serving(daemon)


def test_many_bad_requests_in_a_row(daemon: SkiffyInstance) -> None:
    address = f"ipc://{daemon.paths.command_socket}"
    with pynng.Req0(dial=address, recv_timeout=10_000, send_timeout=10_000) as sock:
        for i in range(200):
            sock.send(b"\xc1" * (i + 1))
            reply = msgspec.msgpack.decode(sock.recv(), type=Reply)
            assert reply.error is not None
            assert reply.error.code == ErrorCode.IPC_MALFORMED
    assert_still_serving(daemon)
