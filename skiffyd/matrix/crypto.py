"""End-to-end encryption: nio's Olm/Megolm machine (vodozemac), used sans-I/O.

Theory of operation
-------------------
:class:`Crypto` wraps nio's ``Olm`` machine. Every call into it is blocking
(nio's crypto store is SQLite) and touches shared state, so the daemon makes
them all on the one cache thread (``Daemon.db``): they are serialized with
each other and with the cache for free, and decryption can run inside the
cache's transaction while a sync is applied.

What the machine is fed, and nothing more (DESIGN.md): the to-device events,
device-list changes and one-time-key counts of each ``/sync``
(:meth:`Crypto.receive`, before the sync's rooms are applied, so a room key
and the messages it unlocks may arrive in the same response), the
``m.room.encrypted`` timeline events to decrypt (:meth:`Crypto.decrypt`), and
the answers to the key requests :class:`CryptoService` makes.

:class:`CryptoService` is the I/O side: uploading device and one-time keys
(and topping them up when the server's count drops), querying device keys of
the people in encrypted rooms, claiming one-time keys for Olm sessions,
sharing the room's Megolm session with every device of every member before
a message is encrypted (one room at a time: a per-room ``trio.Lock``), and
sending the to-device messages nio queues (answers to key requests from the
account's own verified devices).

Megolm sessions are rotated when the session is older or has encrypted more
messages than the room's ``m.room.encryption`` allows (read from the server
when a session is made), and when a member leaves the room (sync tells
:meth:`Crypto.note_members`). Unverified devices get the room key: they are
shown as unverified, never trusted (docs/security.md).

The crypto store is nio's SqliteStore under the account's data dir, pickled
with a key from the keyring, never ``DEFAULT_KEY``: with ``store_path=""`` nio
silently turns encryption off, so :meth:`Crypto.load` checks ``olm`` is set.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

import msgspec
import nio
import structlog
import trio
from nio.store import SqliteStore

from ipc_schema import DeviceInfo, DeviceTrust, VerificationInfo, VerificationUpdated
from skiffyd.core.wire import ClientEvent
from skiffyd.errors import (
    BadResponseError,
    DaemonError,
    MatrixError,
    RequestFailedError,
)
from skiffyd.matrix.transport import decode
from skiffyd.matrix.verification import Verifications

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence
    from pathlib import Path

    from nio.crypto import OlmDevice

    from ipc_schema import Event
    from skiffyd.core.sync import MemberChange
    from skiffyd.matrix.transport import Transport

log = structlog.get_logger(__name__)

MEGOLM = "m.megolm.v1.aes-sha2"
#: The spec's defaults for m.room.encryption's rotation settings.
DEFAULT_ROTATION_MS = 7 * 24 * 3600 * 1000
DEFAULT_ROTATION_MSGS = 100


class RoomKey(NamedTuple):
    """A Megolm session the machine learned: messages it encrypted can now be read."""

    room_id: str
    session_id: str


def _checked(response: Any, what: str) -> Any:
    """nio turns an answer that fails its schema into an error response: refuse it."""
    if isinstance(response, nio.ErrorResponse):
        raise BadResponseError(f"the homeserver's {what} answer is invalid")
    return response


class Crypto:
    """nio's Olm machine. Blocking: call it on the cache thread only."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._olm: Any = client.olm
        #: Rooms whose full member list (joined and invited) is known, by
        #: room: fetched once per run, then kept by sync's member changes.
        self._members: dict[str, set[str]] = {}
        #: Rotation settings per room (from m.room.encryption).
        self._rotation: dict[str, tuple[int, int]] = {}
        self.verification = Verifications(self._olm, user_id=self.user_id, device_id=self.device_id)
        #: Megolm sessions asked of the account's own devices in this run.
        self._key_requests: set[str] = set()

    @classmethod
    def load(
        cls, store_dir: Path, *, user_id: str, device_id: str, access_token: str, pickle_key: str
    ) -> Crypto:
        store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = nio.ClientConfig(
            store=SqliteStore,
            pickle_key=pickle_key,
            encryption_enabled=True,
            # nio's default file name is "<user_id>_<device_id>.db": it would
            # name the account beside the hashed folder.
            store_name="crypto.db",
        )
        client = nio.Client(user_id, device_id, store_path=str(store_dir), config=config)
        client.restore_login(user_id, device_id, access_token)
        if client.olm is None:
            raise DaemonError("the encryption store did not load (olm machine missing)")
        return cls(client)

    @property
    def user_id(self) -> str:
        return str(self._client.user_id)

    @property
    def device_id(self) -> str:
        return str(self._client.device_id)

    @property
    def fingerprint(self) -> str:
        return str(self._olm.account.identity_keys["ed25519"])

    def close(self) -> None:
        store = getattr(self._client, "store", None)
        database = getattr(store, "database", None)
        if database is not None:
            database.close()

    # ------------------------------------------------------------ own keys

    @property
    def should_upload_keys(self) -> bool:
        return bool(self._olm.should_upload_keys)

    def keys_to_upload(self) -> dict[str, Any]:
        return dict(self._olm.share_keys())

    def upload_answered(self, answer: dict[str, Any]) -> None:
        self._olm.handle_response(_checked(nio.KeysUploadResponse.from_dict(answer), "keys upload"))

    # ---------------------------------------------------------- from /sync

    def receive(
        self,
        to_device: list[dict[str, Any]],
        changed: list[str],
        left: list[str],
        otk_counts: dict[str, int],
    ) -> list[RoomKey]:
        """One sync's crypto part; the room keys it brought."""
        olm = self._olm
        keys: list[RoomKey] = []
        for raw in to_device:
            try:
                key = self._to_device(raw)
            except nio.EncryptionError as exc:
                log.info("crypto.to_device_undecryptable", error=type(exc).__name__)
                continue
            except Exception as exc:  # nio's parsers trust their input
                # A malformed event from the server must not stop the sync.
                log.warning("crypto.to_device_bad", error=type(exc).__name__)
                continue
            if key is not None:
                keys.append(key)
        # Key requests from the account's own verified devices are answered
        # (queued as to-device messages); others are left unanswered.
        olm.collect_key_requests()
        self.verification.settle()
        # Someone's devices changed: ask again before the next share. Only
        # users the machine tracks matter; the rest are asked when needed.
        olm.add_changed_users({u for u in changed if u in olm.tracked_users})
        # No encrypted room shared any more: stop following their devices
        # (they are asked again if a room is shared later).
        olm.tracked_users.difference_update(left)
        olm.users_for_key_query.difference_update(left)
        if to_device:
            log.info("crypto.to_device", events=len(to_device), room_keys=len(keys))
        if "signed_curve25519" in otk_counts:
            olm.uploaded_key_count = otk_counts["signed_curve25519"]
        return keys

    def _to_device(self, raw: dict[str, Any]) -> RoomKey | None:
        """One to-device event; the room key it brought, if any."""
        if self.verification.on_raw(raw):
            return None  # the request step of a verification (nio lacks it)
        event = nio.ToDeviceEvent.parse_event(raw)
        if event is None or isinstance(event, (nio.BadEvent, nio.UnknownBadEvent)):
            log.info("crypto.to_device_ignored")
            return None
        if isinstance(event, nio.KeyVerificationStart):
            self.verification.on_start(event)
            return None
        decrypted = self._olm.handle_to_device_event(event)
        if isinstance(decrypted, nio.RoomKeyEvent):  # forwarded keys too
            return RoomKey(decrypted.room_id, decrypted.session_id)
        return None

    def note_members(self, room_id: str, changes: Iterable[MemberChange]) -> None:
        """Sync's member changes of a room (its joined and invited members)."""
        members = self._members.get(room_id)
        left = False
        for change in changes:
            if change.membership in ("join", "invite"):
                if members is not None:
                    members.add(change.user_id)
            else:
                left = left or members is None or change.user_id in members
                if members is not None:
                    members.discard(change.user_id)
        if left and room_id in self._olm.outbound_group_sessions:
            # Whoever left must not read what comes next: a new session.
            log.info("crypto.session_rotated", reason="member left")
            del self._olm.outbound_group_sessions[room_id]

    # ----------------------------------------------------------- decrypting

    def decrypt(self, room_id: str, ev: ClientEvent) -> ClientEvent | None:
        """The plaintext event of an ``m.room.encrypted`` one, or None if no key (yet)."""
        unsigned = ev.unsigned
        if unsigned is not None and unsigned.redacted_because is not None:
            return None  # the server stripped it: nothing left to decrypt
        source: dict[str, Any] = {
            "type": ev.type,
            "content": ev.content,
            "sender": ev.sender,
            "event_id": ev.event_id,
            "origin_server_ts": ev.origin_server_ts,
            "room_id": room_id,
        }
        if unsigned is not None and unsigned.transaction_id is not None:
            source["unsigned"] = {"transaction_id": unsigned.transaction_id}
        try:
            megolm = nio.Event.parse_encrypted_event(source)
            if not isinstance(megolm, nio.MegolmEvent):
                return None
            try:
                plain = self._olm.decrypt_megolm_event(megolm, room_id)
            except nio.EncryptionError:
                self._request_key(room_id, megolm)
                return None
        except Exception as exc:  # nio trusts its input; a bad event stays unreadable
            log.warning("crypto.event_bad", error=type(exc).__name__)
            return None
        if isinstance(plain, (nio.BadEvent, nio.UnknownBadEvent)):
            return None
        src = plain.source
        kind, content = src.get("type"), src.get("content")
        if not isinstance(kind, str) or not isinstance(content, dict):
            return None
        return ClientEvent(
            type=kind,
            content=content,
            sender=ev.sender,
            event_id=ev.event_id,
            origin_server_ts=ev.origin_server_ts,
            unsigned=unsigned,
        )

    def _request_key(self, room_id: str, megolm: Any) -> None:
        """Ask the account's own devices for a missing key, once per session.

        Only they answer (and only once they trust this device); a forwarded
        key is accepted only for a session asked for here (nio's rules).
        """
        olm = self._olm
        session_id = megolm.session_id
        if (
            olm.inbound_group_store.get(room_id, megolm.sender_key, session_id) is not None
            or session_id in olm.outgoing_key_requests
            or session_id in self._key_requests
        ):
            return  # the key is there (a bad message, not a missing key), or asked
        self._key_requests.add(session_id)
        olm.outgoing_to_device_messages.append(megolm.as_key_request(self.user_id, self.device_id))

    def has_session(self, room_id: str, sender_key: str, session_id: str) -> bool:
        return self._olm.inbound_group_store.get(room_id, sender_key, session_id) is not None

    # ------------------------------------------------------------- devices

    def users_to_query(self) -> list[str]:
        return sorted(self._olm.users_for_key_query)

    def track(self, users: Iterable[str]) -> None:
        """Make sure these users' devices are known before sharing with them."""
        olm = self._olm
        olm.users_for_key_query.update(set(users) - olm.tracked_users)

    def keys_queried(self, answer: dict[str, Any]) -> None:
        self._olm.handle_response(_checked(nio.KeysQueryResponse.from_dict(answer), "keys query"))
        self.verification.keys_known()

    def missing_sessions(self, users: Iterable[str]) -> dict[str, list[str]]:
        return dict(self._olm.get_missing_sessions(list(users)))

    def devices_to_claim(self) -> dict[str, list[str]]:
        """Devices needing a new Olm session: wedged ones, or ones whose key
        request waits for a session to answer on."""
        olm = self._olm
        if not (olm.wedged_devices or olm.key_request_devices_no_session):
            return {}
        return dict(olm.get_users_for_key_claiming())

    def keys_claimed(self, answer: dict[str, Any]) -> None:
        self._olm.handle_response(_checked(nio.KeysClaimResponse.from_dict(answer), "keys claim"))
        # Key requests that waited for an Olm session can be answered now.
        self._olm.collect_key_requests()

    def devices(self, user_id: str) -> list[DeviceInfo]:
        """The user's current devices as the machine knows them (ask the server first)."""
        olm = self._olm
        found: list[OlmDevice] = list(olm.device_store.active_user_devices(user_id))
        out = []
        own = user_id == self.user_id
        if own and not any(d.id == self.device_id for d in found):
            keys = olm.account.identity_keys
            out.append(
                DeviceInfo(
                    user_id=user_id,
                    device_id=self.device_id,
                    ed25519=keys["ed25519"],
                    curve25519=keys["curve25519"],
                    trust="verified",
                    own=True,
                )
            )
        for device in found:
            trust: DeviceTrust
            if own and device.id == self.device_id:
                trust = "verified"  # this device itself
            elif olm.is_device_verified(device):
                trust = "verified"
            elif olm.is_device_blacklisted(device):
                trust = "blacklisted"
            else:
                trust = "unverified"  # also nio's "ignored": given keys, never trusted
            out.append(
                DeviceInfo(
                    user_id=device.user_id,
                    device_id=device.id,
                    display_name=device.display_name or None,
                    ed25519=device.ed25519,
                    curve25519=device.curve25519,
                    trust=trust,
                    own=own and device.id == self.device_id,
                )
            )
        return sorted(out, key=lambda d: d.device_id)

    # --------------------------------------------------------- key backup

    def export_sessions(self) -> list[dict[str, Any]]:
        """Every inbound Megolm session, as the export format lists them."""
        out = []
        for session in self._olm.store.load_inbound_group_sessions():
            out.append(
                {
                    "algorithm": MEGOLM,
                    "sender_key": session.sender_key,
                    "sender_claimed_keys": {"ed25519": session.ed25519},
                    "forwarding_curve25519_key_chain": list(session.forwarding_chain),
                    "room_id": session.room_id,
                    "session_id": session.id,
                    "session_key": session.export_session(session.first_known_index),
                }
            )
        return out

    def import_sessions(self, sessions: list[dict[str, Any]]) -> tuple[list[RoomKey], int]:
        """Add exported sessions; the new ones, and how many were skipped."""
        olm = self._olm
        added: list[RoomKey] = []
        skipped = 0
        for entry in sessions:
            try:
                if entry.get("algorithm") != MEGOLM:
                    raise ValueError("algorithm")
                session = nio.crypto.Olm._import_group_session(
                    entry["session_key"],
                    entry["sender_claimed_keys"]["ed25519"],
                    entry["sender_key"],
                    entry["room_id"],
                    list(entry.get("forwarding_curve25519_key_chain") or []),
                )
            except (KeyError, TypeError, ValueError):
                session = None
            known = (
                olm.inbound_group_store.get(session.room_id, session.sender_key, session.id)
                if session is not None
                else None
            )
            if session is None or (
                known is not None and known.first_known_index <= session.first_known_index
            ):
                skipped += 1  # unusable, or nothing this device cannot already read
                continue
            olm.inbound_group_store.add(session)
            olm.save_inbound_group_session(session)
            added.append(RoomKey(session.room_id, session.id))
        return added, skipped

    # ------------------------------------------------------------- sending

    def members(self, room_id: str) -> set[str] | None:
        known = self._members.get(room_id)
        return None if known is None else set(known)

    def set_members(self, room_id: str, users: Iterable[str]) -> None:
        self._members[room_id] = set(users)

    def set_rotation(self, room_id: str, period_ms: int, period_msgs: int) -> None:
        self._rotation[room_id] = (period_ms, period_msgs)

    def knows_rotation(self, room_id: str) -> bool:
        return room_id in self._rotation

    def share_payloads(self, room_id: str, users: list[str]) -> list[tuple[Any, dict[str, Any]]]:
        """The to-device messages that give the room's session to devices that lack it.

        A session that expired (age, messages) is replaced first. Devices
        without an Olm session (no one-time key could be claimed) are skipped
        and tried again at the next send.
        """
        olm = self._olm
        session = olm.outbound_group_sessions.get(room_id)
        if session is not None and session.expired:
            log.info("crypto.session_rotated", reason="expired")
            del olm.outbound_group_sessions[room_id]
            session = None
        if session is None:
            olm.create_outbound_group_session(room_id)
            session = olm.outbound_group_sessions[room_id]
            period_ms, period_msgs = self._rotation.get(
                room_id, (DEFAULT_ROTATION_MS, DEFAULT_ROTATION_MSGS)
            )
            session.max_age = timedelta(milliseconds=period_ms)
            session.max_messages = period_msgs
        # nio's sharer starts a new session when the current one is marked
        # shared; unmark it to hand the same session to new devices only.
        session.shared = False
        payloads = list(
            olm.share_group_session_parallel(room_id, users, ignore_unverified_devices=True)
        )
        return payloads

    def mark_shared(self, room_id: str, shared_with: set[tuple[str, str]]) -> None:
        session = self._olm.outbound_group_sessions[room_id]
        session.users_shared_with.update(shared_with)
        session.shared = True

    def encrypt(self, room_id: str, event_type: str, content: dict[str, Any]) -> dict[str, Any]:
        """Megolm-encrypt one event with the room's (shared) session."""
        encrypted: dict[str, Any] = self._olm.group_encrypt(
            room_id, {"type": event_type, "content": content}
        )
        # Relations stay readable to the server (aggregation), per the spec.
        if "m.relates_to" in content:
            encrypted["m.relates_to"] = content["m.relates_to"]
        return encrypted

    def outgoing_to_device(self) -> list[Any]:
        return list(self._olm.outgoing_to_device_messages)

    def to_device_sent(self, message: Any) -> None:
        self._olm.handle_response(nio.ToDeviceResponse(message))


_object = msgspec.json.Decoder(dict[str, Any])


def _q(value: str) -> str:
    return quote(value, safe="")


class CryptoService:
    """The network side of :class:`Crypto`."""

    def __init__(
        self,
        crypto: Crypto,
        *,
        transport: Transport,
        db: Callable[..., Awaitable[Any]],
        publish: Callable[[Sequence[Event]], None] = lambda events: None,
        seq: Callable[[], int] = lambda: 0,
    ) -> None:
        self.crypto = crypto
        self._transport = transport
        self._db = db
        self._publish = publish
        self._seq = seq
        self._send_lock = trio.Lock()
        #: What UIs were last told of each verification.
        self._told: dict[str, VerificationInfo] = {}
        self._room_locks: dict[str, trio.Lock] = {}
        self._keys_lock = trio.Lock()
        self._wake = trio.Event()
        self.keys_uploaded = False

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = await self._transport.request("POST", path, json=body)
        return decode(_object, data, "keys")

    def wake(self) -> None:
        """Something may need doing (a sync arrived)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the device's keys published and its to-device messages sent."""
        task_status.started()
        while True:
            try:
                await self.upload_keys()
                self.keys_uploaded = True
                await self.query_keys()
                await self.claim_keys()
                await self.send_to_device()
                await self.publish_verifications()
            except MatrixError as exc:
                log.info("crypto.maintenance_failed", code=exc.code)
                with trio.move_on_after(30):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            await self._wake.wait()
            self._wake = trio.Event()

    async def upload_keys(self) -> None:
        """Device keys once, one-time keys whenever the server's count is low."""
        c = self.crypto
        while await self._db(lambda: c.should_upload_keys):
            body = await self._db(c.keys_to_upload)
            answer = await self._post("/_matrix/client/v3/keys/upload", body)
            await self._db(c.upload_answered, answer)
            log.info("crypto.keys_uploaded")

    async def query_keys(self) -> None:
        async with self._keys_lock:
            users = await self._db(self.crypto.users_to_query)
            if not users:
                return
            answer = await self._post(
                "/_matrix/client/v3/keys/query",
                {"device_keys": {u: [] for u in users}, "timeout": 10_000},
            )
            await self._db(self.crypto.keys_queried, answer)

    async def claim_keys(self, users: Iterable[str] | None = None) -> None:
        """One-time keys for Olm sessions: with these users' devices, or, without
        users, with the devices nio needs one for (key requests, wedged)."""
        if users is None:
            missing = await self._db(self.crypto.devices_to_claim)
        else:
            missing = await self._db(self.crypto.missing_sessions, list(users))
        if not missing:
            return
        answer = await self._post(
            "/_matrix/client/v3/keys/claim",
            {
                "one_time_keys": {
                    u: dict.fromkeys(devices, "signed_curve25519") for u, devices in missing.items()
                },
                "timeout": 10_000,
            },
        )
        await self._db(self.crypto.keys_claimed, answer)

    async def _put_to_device(self, event_type: str, messages: dict[str, Any]) -> None:
        txn = secrets.token_hex(16)
        await self._transport.request(
            "PUT",
            f"/_matrix/client/v3/sendToDevice/{_q(event_type)}/{txn}",
            json={"messages": messages},
        )

    async def send_to_device(self) -> None:
        """What nio queued: verification steps, answers to key requests, Olm unwedging."""
        async with self._send_lock:
            for message in await self._db(self.crypto.outgoing_to_device):
                await self._put_to_device(message.type, message.as_dict()["messages"])
                await self._db(self.crypto.to_device_sent, message)

    async def publish_verifications(self) -> list[VerificationInfo]:
        """Tell UIs of verifications that changed since they were last told."""
        now: list[VerificationInfo] = await self._db(self.crypto.verification.infos)
        changed = [v for v in now if self._told.get(v.transaction_id) != v]
        self._told = {v.transaction_id: v for v in now}
        if changed:
            seq = self._seq()
            self._publish([VerificationUpdated(seq=seq, verification=v) for v in changed])
        return now

    async def verify(self, step: Callable[..., VerificationInfo], *args: str) -> VerificationInfo:
        """One verification step by the user: apply it, send what it says, publish."""
        if step == self.crypto.verification.start:
            await self._db(self.crypto.track, [args[0]])
            await self.query_keys()
        info: VerificationInfo = await self._db(step, *args)
        await self.send_to_device()
        await self.publish_verifications()
        return info

    async def _room_members(self, room_id: str) -> set[str]:
        known: set[str] | None = await self._db(self.crypto.members, room_id)
        if known is not None:
            return known
        data = await self._transport.request(
            "GET",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/members",
            params={"not_membership": "leave"},
        )
        chunk = decode(_object, data, "members").get("chunk")
        chunk = chunk if isinstance(chunk, list) else []
        users = {
            ev["state_key"]
            for ev in chunk
            if isinstance(ev, dict)
            and isinstance(ev.get("state_key"), str)
            and isinstance(ev.get("content"), dict)
            and ev["content"].get("membership") in ("join", "invite")
        }
        await self._db(self.crypto.set_members, room_id, users)
        return users

    async def _learn_rotation(self, room_id: str) -> None:
        if not await self._db(self.crypto.knows_rotation, room_id):
            await self.room_encryption(room_id)

    async def room_encryption(self, room_id: str) -> bool:
        """Ask the server whether the room is encrypted; learn its rotation settings."""
        try:
            data = await self._transport.request(
                "GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/state/m.room.encryption/"
            )
            content = decode(_object, data, "room state")
        except RequestFailedError as exc:
            if exc.status != 404:
                raise
            content = {}
        period_ms = content.get("rotation_period_ms")
        period_msgs = content.get("rotation_period_msgs")
        await self._db(
            self.crypto.set_rotation,
            room_id,
            period_ms if isinstance(period_ms, int) and period_ms > 0 else DEFAULT_ROTATION_MS,
            period_msgs
            if isinstance(period_msgs, int) and period_msgs > 0
            else DEFAULT_ROTATION_MSGS,
        )
        return isinstance(content.get("algorithm"), str)

    async def devices(self, user_id: str) -> list[DeviceInfo]:
        """A user's devices, asking the server for their keys when unknown or changed."""
        await self._db(self.crypto.track, [user_id])
        await self.query_keys()
        found: list[DeviceInfo] = await self._db(self.crypto.devices, user_id)
        return found

    async def encrypt(
        self, room_id: str, event_type: str, content: dict[str, Any]
    ) -> dict[str, Any]:
        """Share the room's session with every member's devices, then encrypt.

        One room at a time: two sends into a room never share twice at once.
        """
        lock = self._room_locks.setdefault(room_id, trio.Lock())
        async with lock:
            c = self.crypto
            await self._learn_rotation(room_id)
            users = sorted(await self._room_members(room_id) | {c.user_id})
            await self._db(c.track, users)
            await self.query_keys()
            await self.claim_keys(users)
            payloads = await self._db(c.share_payloads, room_id, users)
            shared: set[tuple[str, str]] = set()
            for sharing_with, to_device in payloads:
                await self._put_to_device("m.room.encrypted", to_device["messages"])
                shared |= sharing_with
            await self._db(c.mark_shared, room_id, shared)
            encrypted: dict[str, Any] = await self._db(c.encrypt, room_id, event_type, content)
            return encrypted
