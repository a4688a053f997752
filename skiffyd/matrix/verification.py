"""Emoji (SAS) device verification: nio's SAS machine, and the request step nio lacks.

Theory of operation
-------------------
nio 0.26 speaks the SAS exchange itself (``m.key.verification.start``,
``accept``, ``key``, ``mac``, ``cancel``): :class:`Verifications` drives it
through nio's ``Olm`` machine and turns each one into a
:class:`~ipc_schema.VerificationInfo` for the UIs.

Current clients (Element and every client on matrix-rust-sdk) begin with a
request: ``m.key.verification.request`` → ``m.key.verification.ready`` →
then one side sends ``start``, and both end with ``m.key.verification.done``.
nio knows none of these, so they are handled here: an incoming request is
shown as ``requested``; accepting it answers ``ready`` and accepts the
``start`` that follows; a verification that began with a request ends with
``done``. ``verify_start`` begins with a plain ``start`` (what nio speaks).

Like :class:`~skiffyd.matrix.crypto.Crypto`, blocking and called on the
cache thread only. Outgoing to-device messages go to nio's queue, which
:class:`~skiffyd.matrix.crypto.CryptoService` sends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nio
import structlog
from nio.crypto.sas import SasState

from ipc_schema import Emoji, ErrorCode, VerificationInfo, VerificationState
from skiffyd.errors import SkiffyError

if TYPE_CHECKING:
    from collections.abc import Callable

log = structlog.get_logger(__name__)

SAS = "m.sas.v1"
#: The spec: a request older than this (or from further in the future) is ignored.
REQUEST_LIFETIME_S = 600.0


@dataclass(slots=True)
class _Request:
    """An ``m.key.verification.request`` another device sent, until its ``start``."""

    user_id: str
    device_id: str
    received: float
    ready: bool = False
    cancel_reason: str | None = None


def _info(transaction_id: str, sas: Any) -> VerificationInfo:
    state: VerificationState
    emojis: list[Emoji] = []
    decimals: list[int] = []
    if sas.canceled:
        state = "canceled"
    elif sas.verified:
        state = "verified"
    elif sas.state in (SasState.key_received, SasState.mac_received) and sas.established_sas:
        state = "confirmed" if sas.sas_accepted else "keys_exchanged"
        emojis = [Emoji(emoji=e, name=n) for e, n in sas.get_emoji()]
        decimals = list(sas.get_decimals())
    elif sas.state == SasState.accepted:
        state = "accepted"
    else:
        state = "started" if sas.we_started_it else "requested"
    return VerificationInfo(
        transaction_id=transaction_id,
        user_id=sas.other_olm_device.user_id,
        device_id=sas.other_olm_device.id,
        we_started=bool(sas.we_started_it),
        state=state,
        emojis=emojis,
        decimals=decimals,
        cancel_reason=sas.cancel_reason if sas.canceled else None,
    )


def _request_info(transaction_id: str, request: _Request) -> VerificationInfo:
    state: VerificationState
    if request.cancel_reason is not None:
        state = "canceled"
    else:
        state = "accepted" if request.ready else "requested"
    return VerificationInfo(
        transaction_id=transaction_id,
        user_id=request.user_id,
        device_id=request.device_id,
        we_started=False,
        state=state,
        cancel_reason=request.cancel_reason,
    )


class Verifications:
    def __init__(self, olm: Any, *, user_id: str, device_id: str) -> None:
        self._olm = olm
        self._user_id = user_id
        self._device_id = device_id
        self._requests: dict[str, _Request] = {}
        #: Verifications that began with a request: they end with ``done``.
        self._request_flow: set[str] = set()
        self._done_sent: set[str] = set()
        #: Starts from devices whose keys are being fetched (nio drops them).
        self._waiting_starts: list[Any] = []

    # ------------------------------------------------------------- to-device

    def _send(self, event_type: str, user_id: str, device_id: str, content: dict[str, Any]) -> None:
        self._olm.outgoing_to_device_messages.append(
            nio.ToDeviceMessage(event_type, user_id, device_id, content)
        )

    def knows(self, user_id: str, device_id: str) -> bool:
        store = self._olm.device_store
        return user_id in store.users and device_id in store.devices(user_id)

    def on_raw(self, raw: dict[str, Any]) -> bool:
        """The request-flow events nio does not know; True if it was one."""
        kind = raw.get("type")
        content = raw.get("content")
        sender = raw.get("sender")
        if not isinstance(content, dict) or not isinstance(sender, str):
            return False
        txn = content.get("transaction_id")
        if not isinstance(txn, str):
            return False
        if kind == "m.key.verification.request":
            device = content.get("from_device")
            methods = content.get("methods")
            sent = content.get("timestamp")
            now = time.time()
            if (
                not isinstance(device, str)
                or not isinstance(methods, list)
                or SAS not in methods
                or (isinstance(sent, int) and abs(now - sent / 1000) > REQUEST_LIFETIME_S)
            ):
                log.info("verification.request_ignored")
                return True
            self._requests[txn] = _Request(sender, device, time.monotonic())
            self._request_flow.add(txn)
            if not self.knows(sender, device):
                self._olm.users_for_key_query.add(sender)
            return True
        if kind == "m.key.verification.done":
            return True  # nothing to do: the MACs already decided
        if kind == "m.key.verification.ready":
            log.info("verification.ready_ignored")  # skiffyd never sends a request
            return True
        if kind == "m.key.verification.cancel" and txn in self._requests:
            reason = content.get("reason")
            self._requests[txn].cancel_reason = reason if isinstance(reason, str) else "canceled"
            return True
        return False

    def on_start(self, event: Any) -> bool:
        """A ``start``: False when nio cannot take it yet (the device is unknown)."""
        if not self.knows(event.sender, event.from_device):
            self._waiting_starts.append(event)
            self._olm.users_for_key_query.add(event.sender)
            return False
        self._olm.handle_key_verification(event)
        request = self._requests.pop(event.transaction_id, None)
        sas = self._olm.key_verifications.get(event.transaction_id)
        if request is not None and request.ready and sas is not None and not sas.canceled:
            # The user accepted the request: accept the start that follows it.
            self._olm.outgoing_to_device_messages.append(sas.accept_verification())
        return True

    def keys_known(self) -> None:
        """Device keys arrived: handle the starts that waited for them."""
        waiting, self._waiting_starts = self._waiting_starts, []
        for start in waiting:
            if not self.on_start(start):
                log.info("verification.from_unknown_device")
                self._waiting_starts.remove(start)

    def settle(self) -> None:
        """After any step: ``done`` for finished request-flow verifications,
        and requests past their lifetime canceled."""
        for txn, sas in self._olm.key_verifications.items():
            if sas.verified and txn in self._request_flow and txn not in self._done_sent:
                self._done_sent.add(txn)
                other = sas.other_olm_device
                self._send(
                    "m.key.verification.done", other.user_id, other.id, {"transaction_id": txn}
                )
        now = time.monotonic()
        for request in self._requests.values():
            if request.cancel_reason is None and now - request.received > REQUEST_LIFETIME_S:
                request.cancel_reason = "timed out"

    # ----------------------------------------------------------------- reads

    def infos(self) -> list[VerificationInfo]:
        olm = self._olm
        olm.clear_verifications()  # queues cancellations for timed-out ones
        self.settle()
        found = [_info(txn, sas) for txn, sas in olm.key_verifications.items()]
        found += [
            _request_info(txn, request)
            for txn, request in self._requests.items()
            if txn not in olm.key_verifications
        ]
        return sorted(found, key=lambda v: v.transaction_id)

    # ----------------------------------------------------------------- steps

    def _unknown(self, transaction_id: str) -> SkiffyError:
        return SkiffyError(
            "no verification with that transaction id",
            code=ErrorCode.CRYPTO_UNKNOWN_VERIFICATION,
            details={"transaction_id": transaction_id},
        )

    def _not_now(self, transaction_id: str, why: str) -> SkiffyError:
        return SkiffyError(
            f"not possible now: {why}",
            code=ErrorCode.CRYPTO_VERIFICATION_STATE,
            details={"transaction_id": transaction_id},
        )

    def start(self, user_id: str, device_id: str) -> VerificationInfo:
        olm = self._olm
        device = next(
            (d for d in olm.device_store.active_user_devices(user_id) if d.id == device_id), None
        )
        if device is None or (user_id == self._user_id and device_id == self._device_id):
            raise SkiffyError(
                "no such device to verify (see `skiffyd devices USER`)",
                code=ErrorCode.CRYPTO_UNKNOWN_DEVICE,
                details={"user_id": user_id, "device_id": device_id},
            )
        message = olm.create_sas(device)
        olm.outgoing_to_device_messages.append(message)
        txn = str(message.content["transaction_id"])
        return _info(txn, olm.key_verifications[txn])

    def _step(self, transaction_id: str, step: Callable[[Any], Any]) -> VerificationInfo:
        sas = self._olm.key_verifications.get(transaction_id)
        if sas is None:
            raise self._unknown(transaction_id)
        try:
            message = step(sas)
        except nio.LocalProtocolError as exc:
            raise self._not_now(transaction_id, str(exc)) from exc
        if message is not None:
            self._olm.outgoing_to_device_messages.append(message)
        if sas.verified:
            self._olm.verify_device(sas.other_olm_device)
        self.settle()
        return _info(transaction_id, sas)

    def accept(self, transaction_id: str) -> VerificationInfo:
        request = self._requests.get(transaction_id)
        if request is not None and transaction_id not in self._olm.key_verifications:
            if request.ready or request.cancel_reason is not None:
                raise self._not_now(transaction_id, "already answered")
            request.ready = True
            self._send(
                "m.key.verification.ready",
                request.user_id,
                request.device_id,
                {
                    "from_device": self._device_id,
                    "methods": [SAS],
                    "transaction_id": transaction_id,
                },
            )
            return _request_info(transaction_id, request)

        def accept(sas: Any) -> Any:
            if sas.we_started_it or sas.state != SasState.started:
                raise nio.LocalProtocolError("only a verification another device started")
            return sas.accept_verification()

        return self._step(transaction_id, accept)

    def confirm(self, transaction_id: str) -> VerificationInfo:
        def confirm(sas: Any) -> Any:
            if sas.canceled or sas.sas_accepted:
                raise nio.LocalProtocolError("it is over or already confirmed")
            sas.accept_sas()  # refuses before the keys were exchanged
            return sas.get_mac()

        if transaction_id in self._requests and transaction_id not in self._olm.key_verifications:
            raise self._not_now(transaction_id, "no emojis yet")
        return self._step(transaction_id, confirm)

    def cancel(self, transaction_id: str) -> VerificationInfo:
        request = self._requests.get(transaction_id)
        if request is not None and transaction_id not in self._olm.key_verifications:
            if request.cancel_reason is None:
                request.cancel_reason = "canceled by the user"
                self._send(
                    "m.key.verification.cancel",
                    request.user_id,
                    request.device_id,
                    {"transaction_id": transaction_id, "code": "m.user", "reason": "Canceled"},
                )
            return _request_info(transaction_id, request)

        def cancel(sas: Any) -> Any:
            if sas.canceled or sas.verified:
                return None
            sas.cancel()
            return sas.get_cancellation()

        return self._step(transaction_id, cancel)
