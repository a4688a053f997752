"""The frame rules, without sockets."""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ipc_schema as s
from skiffyd.ipc import codec

enc = msgspec.msgpack.Encoder()


def _sample(t: msgspec.inspect.Type) -> Any:
    """A valid value for a required field of type ``t``."""
    if isinstance(t, msgspec.inspect.UnionType):
        return _sample(next(x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)))
    if isinstance(t, msgspec.inspect.LiteralType):
        return t.values[0]
    samples: dict[type, Any] = {
        msgspec.inspect.StrType: "!x:hs",
        msgspec.inspect.IntType: 3,
        msgspec.inspect.BoolType: True,
        msgspec.inspect.ListType: [],
        msgspec.inspect.DictType: {},
    }
    return samples[type(t)]


def _every_command() -> list[s.Request]:
    """One instance of every command in the contract, required fields filled."""
    requests: list[s.Request] = []
    for cls in get_args(s.Request):
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        args = {f.name: _sample(f.type) for f in info.fields if f.required}
        requests.append(cls(**args))
    return requests


def test_every_command_decodes() -> None:
    requests: list[s.Request] = [
        s.Hello(),
        s.Status(),
        s.Login(homeserver="https://hs", user="@u:hs", password="pw"),
        s.Logout(),
        s.Rooms(),
        s.Messages(room_id="!r:hs", limit=3),
        s.Send(room_id="!r:hs", body="hi"),
        s.Join(room="#a:hs"),
        s.ChangesSince(seq=4, limit=2),
        *_every_command(),
    ]
    assert {type(r).__struct_config__.tag for r in requests} == s.COMMAND_NAMES
    for req in requests:
        assert codec.decode_request(codec.encode_request(req)) == req


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xc1", s.ErrorCode.IPC_MALFORMED),
        (b"", s.ErrorCode.IPC_MALFORMED),
        (enc.encode({"cmd": "status"}) + b"\x00", s.ErrorCode.IPC_MALFORMED),
        (enc.encode([1, 2]), s.ErrorCode.IPC_MALFORMED),
        (enc.encode({1: 2}), s.ErrorCode.IPC_MALFORMED),
        (enc.encode({"cmd": "launch_missiles"}), s.ErrorCode.IPC_UNKNOWN_COMMAND),
        (enc.encode({"cmd": 7}), s.ErrorCode.IPC_UNKNOWN_COMMAND),
        (enc.encode({"room_id": "!r:hs"}), s.ErrorCode.IPC_UNKNOWN_COMMAND),
        (enc.encode({"cmd": "send", "room_id": "!r:hs"}), s.ErrorCode.IPC_INVALID_ARGUMENT),
        (enc.encode({"cmd": "messages", "room_id": 5}), s.ErrorCode.IPC_INVALID_ARGUMENT),
        (b"\x00" * (s.MAX_REQUEST_BYTES + 1), s.ErrorCode.IPC_TOO_LARGE),
        # Well-formed msgpack around strings that are not UTF-8 (msgspec raises
        # UnicodeDecodeError there, not DecodeError).
        (b"\x81\xa3cmd\xa6statu\x92", s.ErrorCode.IPC_MALFORMED),
        (b"\x81\xa3c\xffd\xa6status", s.ErrorCode.IPC_UNKNOWN_COMMAND),  # key skipped
        (b"\x82\xa3cmd\xa4join\xa4room\xa2\xff\xfe", s.ErrorCode.IPC_MALFORMED),
    ],
)
def test_bad_frames_get_the_right_code(data: bytes, code: str) -> None:
    error = codec.decode_request(data)
    assert isinstance(error, s.ErrorInfo)
    assert error.code == code


def test_unknown_command_names_it_and_lists_the_known_ones() -> None:
    error = codec.decode_request(enc.encode({"cmd": "launch_missiles"}))
    assert isinstance(error, s.ErrorInfo)
    assert error.details == {"cmd": "launch_missiles", "known": sorted(s.COMMAND_NAMES)}


def test_invalid_argument_names_the_field_but_never_the_value() -> None:
    secret = "hunter2-correct-horse"
    frame = enc.encode(
        {"cmd": "login", "homeserver": "https://hs", "user": "@u:hs", "password": [secret]}
    )
    error = codec.decode_request(frame)
    assert isinstance(error, s.ErrorInfo)
    assert error.code == s.ErrorCode.IPC_INVALID_ARGUMENT
    assert "`$.password`" in error.message
    assert error.details == {"cmd": "login", "path": "$.password"}
    assert secret not in msgspec.json.encode(error).decode()


def test_missing_field_is_named() -> None:
    error = codec.decode_request(enc.encode({"cmd": "login", "homeserver": "h", "user": "u"}))
    assert isinstance(error, s.ErrorInfo)
    assert "missing required field `password`" in error.message


def test_value_echoing_msgspec_messages_are_reduced() -> None:
    # msgspec repeats the value for enum/literal mismatches; the codec must not.
    class WithLiteral(msgspec.Struct):
        mode: Literal["a", "b"]

    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"mode": "TOP-SECRET"}, WithLiteral)
    assert "TOP-SECRET" in str(info.value)  # the premise
    phrase, path = codec._field_error(info.value)
    assert (phrase, path) == ("Invalid value", "$.mode")


def test_reply_and_event_frames_round_trip() -> None:
    reply = s.Reply(error=s.ErrorInfo(code="X", message="m", details={"a": 1}))
    assert codec.decode_reply(codec.encode_reply(reply)) == reply
    events: list[s.Event] = [
        s.RoomUpdated(seq=1, room=s.RoomInfo(room_id="!r:hs", name="r")),
        s.SessionStateChanged(seq=1, state="ready"),
    ]
    batch = codec.decode_events(codec.encode_events("inst", events))
    assert batch == s.EventBatch(instance_id="inst", events=events)


VALID_FRAMES = [
    codec.encode_request(r)
    for r in (
        s.Login(homeserver="https://hs", user="@u:hs", password="pw"),
        s.Messages(room_id="!r:hs", limit=3),
        s.Send(room_id="!r:hs", body="hello there"),
        s.ChangesSince(seq=4, limit=2),
    )
]


@given(st.binary(max_size=512))
def test_decode_request_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    result = codec.decode_request(data)
    assert isinstance(result, (s.ErrorInfo, *s.Request.__args__))  # type: ignore[attr-defined]


@given(
    st.sampled_from(VALID_FRAMES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_decode_request_never_raises_on_mutated_frames(
    frame: bytes, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(frame)
    for pos, value in edits:
        data[pos % len(data)] = value
    result = codec.decode_request(bytes(data))
    assert isinstance(result, (s.ErrorInfo, *s.Request.__args__))  # type: ignore[attr-defined]
