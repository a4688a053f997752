"""Bytes in, Structs out: the msgpack side of the IPC contract, with no sockets.

The server and the client library both go through here, so the rules for
what a frame means live in one place and are tested without nng:

* :func:`decode_request` turns one request frame into a :data:`Request` or
  into the :class:`ErrorInfo` the daemon answers with. It never raises (a
  property test feeds it arbitrary and mutated frames), and
  its error messages never repeat a value from the frame (a value may be a
  password or a message body): they name the field and the expected type,
  nothing else.
* :func:`encode_reply` / :func:`decode_reply` and :func:`encode_events` /
  :func:`decode_events` are the other frames.

The decoders are built once: msgspec decoders are reusable and cheap to call,
expensive to build.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec

from ipc_schema import (
    COMMAND_NAMES,
    MAX_REQUEST_BYTES,
    ErrorCode,
    ErrorInfo,
    Event,
    EventBatch,
    Reply,
    Request,
    Result,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


class _Envelope(msgspec.Struct):
    """Just enough of a request to tell an unknown command from bad arguments."""

    cmd: Any = None


_request_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(Request)
_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)
_reply_decoder = msgspec.msgpack.Decoder(Reply)
_events_decoder = msgspec.msgpack.Decoder(EventBatch)
_encoder = msgspec.msgpack.Encoder()

# msgspec phrases that name only types and fields, never a value. Anything
# else (for example "Invalid value 'x'", "Invalid enum value 'x'") is reduced
# to "Invalid value" so that no value ever leaves the decoder.
_SAFE_PHRASE = re.compile(
    r"(Expected `[^`']*`( of length)?( [<>]=? -?[0-9.]+)?(, got `[^`']*`)?"
    r"|Object missing required field `[A-Za-z0-9_]*`"
    r"|Object contains unknown field `[A-Za-z0-9_]*`)"
)
_SAFE_PATH = re.compile(r"\$[A-Za-z0-9_.\[\]]*")
_SAFE_CMD = re.compile(r"[a-z0-9_]{1,64}")


def _field_error(exc: msgspec.ValidationError) -> tuple[str, str | None]:
    """msgspec's message, reduced to what is safe to show: (phrase, path)."""
    text = str(exc)
    phrase, sep, where = text.partition(" - at ")
    path = where.strip("`") if sep else None
    if path is not None and not _SAFE_PATH.fullmatch(path):
        path = None
    if not _SAFE_PHRASE.fullmatch(phrase):
        phrase = "Invalid value"
    return phrase, path


def decode_request(data: bytes) -> Request | ErrorInfo:
    """One request frame → a Request, or the error the daemon should answer."""
    if len(data) > MAX_REQUEST_BYTES:
        return ErrorInfo(
            code=ErrorCode.IPC_TOO_LARGE,
            message=f"request of {len(data)} bytes is larger than the limit of "
            f"{MAX_REQUEST_BYTES} bytes",
            details={"size": len(data), "limit": MAX_REQUEST_BYTES},
        )
    try:
        request: Request = _request_decoder.decode(data)
    except msgspec.ValidationError as exc:
        validation_error = exc
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec raises UnicodeDecodeError, not DecodeError, for a str that
        # is not UTF-8.
        return ErrorInfo(code=ErrorCode.IPC_MALFORMED, message="request is not valid msgpack")
    else:
        return request

    try:
        envelope = _envelope_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return ErrorInfo(
            code=ErrorCode.IPC_MALFORMED,
            message="request is not a msgpack map with string keys",
        )
    cmd = envelope.cmd
    if not isinstance(cmd, str) or cmd not in COMMAND_NAMES:
        details: dict[str, Any] = {"known": sorted(COMMAND_NAMES)}
        if isinstance(cmd, str) and _SAFE_CMD.fullmatch(cmd):
            details["cmd"] = cmd
        message = (
            "request has no `cmd` field" if cmd is None else "request names an unknown command"
        )
        return ErrorInfo(code=ErrorCode.IPC_UNKNOWN_COMMAND, message=message, details=details)

    phrase, path = _field_error(validation_error)
    where = f" - at `{path}`" if path else ""
    details = {"cmd": cmd}
    if path:
        details["path"] = path
    return ErrorInfo(
        code=ErrorCode.IPC_INVALID_ARGUMENT,
        message=f"invalid arguments for `{cmd}`: {phrase}{where}",
        details=details,
    )


def encode_request(request: Request) -> bytes:
    return _encoder.encode(request)


def encode_reply(reply: Reply) -> bytes:
    return _encoder.encode(reply)


def error_reply(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    return _encoder.encode(Reply(error=ErrorInfo(code=code, message=message, details=details)))


def result_reply(result: Result) -> bytes:
    return _encoder.encode(Reply(result=result))


def decode_reply(data: bytes) -> Reply:
    """Raises msgspec.DecodeError (a ValidationError too) on a frame that is no Reply."""
    try:
        reply: Reply = _reply_decoder.decode(data)
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError("reply holds a string that is not UTF-8") from exc
    return reply


def encode_events(instance_id: str, events: Sequence[Event]) -> bytes:
    return _encoder.encode(EventBatch(instance_id=instance_id, events=list(events)))


def decode_events(data: bytes) -> EventBatch:
    """Raises msgspec.DecodeError on a frame that is no EventBatch."""
    try:
        batch: EventBatch = _events_decoder.decode(data)
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError("event frame holds a string that is not UTF-8") from exc
    return batch
