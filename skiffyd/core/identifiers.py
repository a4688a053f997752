"""Matrix identifier syntax checks (user ids, room ids, aliases)."""

from __future__ import annotations

import re

from ipc_schema import ErrorCode
from skiffyd.errors import SkiffyError

# Loose on purpose: historical ids allow more than the current grammar.
_SERVER = r"[A-Za-z0-9.\-:\[\]]+"
USER_ID = re.compile(rf"^@[^:\s]+:{_SERVER}$")
ROOM_ID = re.compile(r"^![^:\s]+(:" + _SERVER + ")?$")
ROOM_ALIAS = re.compile(rf"^#[^:\s]+:{_SERVER}$")


def check_user_id(value: str) -> str:
    if len(value) > 255 or not USER_ID.match(value):
        raise SkiffyError(
            "not a Matrix user id (expected @name:server)",
            code=ErrorCode.IPC_INVALID_ARGUMENT,
            details={"field": "user"},
        )
    return value


def check_room_id(value: str) -> str:
    if len(value) > 255 or not ROOM_ID.match(value):
        raise SkiffyError(
            "not a Matrix room id (expected !opaque:server)",
            code=ErrorCode.IPC_INVALID_ARGUMENT,
            details={"field": "room_id"},
        )
    return value


def check_room_id_or_alias(value: str) -> str:
    if len(value) > 255 or not (ROOM_ID.match(value) or ROOM_ALIAS.match(value)):
        raise SkiffyError(
            "not a room id (!…:server) or alias (#…:server)",
            code=ErrorCode.IPC_INVALID_ARGUMENT,
            details={"field": "room"},
        )
    return value
