"""The daemon: one root nursery, the IPC server, and the account's services.

Theory of operation
-------------------
``skiffyd run`` takes an exclusive lock in the runtime dir (a second daemon
for the same user fails with ``SKIFFY_DAEMON_ALREADY_RUNNING``), checks that
a keyring backend exists, starts the IPC server, resumes the stored account
if there is one, tells the service manager it is ready, and waits for
SIGTERM/SIGINT.

The account lives in an :class:`AccountSession`: its credentials, its
transport, its cache and its two services (sync, outbox), run in a nursery
that is a child of the root nursery, so logout can cancel exactly that
scope. The cache is only ever touched through :meth:`Daemon.db`, one worker
thread at a time (``CapacityLimiter(1)``): apsw is blocking.

Reads never wait on the network: they are answered from the cache whatever
the sync state. Writes go to the outbox first.

Shutdown: new commands are refused, the services are cancelled (the cache
commits whole transactions only, so cancellation never leaves half a sync),
the cache is closed, and the lock released.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import threading
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, TypeVar

import apsw
import msgspec
import structlog
import trio

import ipc_schema as wire
from skiffyd import commands, credentials, logs
from skiffyd.cache import Cache
from skiffyd.cache.store import (
    KEYINGS,
    AnswerKey,
    CacheReader,
    CacheReads,
    MessagesAnswer,
    ReaderBusy,
)
from skiffyd.config import Paths, Settings
from skiffyd.core.homeserver import normalize_homeserver
from skiffyd.core.identifiers import check_room_id, check_room_id_or_alias, check_user_id
from skiffyd.credentials import Credentials
from skiffyd.errors import (
    CacheError,
    CacheWrongKeyError,
    ConfigError,
    DaemonAlreadyRunningError,
    MatrixError,
    NotLoggedInError,
    SessionExpiredError,
    SkiffyError,
    UnknownRoomError,
)
from skiffyd.ipc import codec
from skiffyd.ipc.server import IpcServer
from skiffyd.matrix import history, sso
from skiffyd.matrix import session as matrix_session
from skiffyd.matrix.outbox import OutboxService
from skiffyd.matrix.session import TokenManager
from skiffyd.matrix.sync import SyncService
from skiffyd.matrix.transport import Transport
from skiffyd.notify import notify

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from pathlib import Path

    from skiffyd.core.outbox import OutboxItem
    from skiffyd.core.wire import LoginResponse
    from skiffyd.matrix.crypto import Crypto, CryptoService

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: How long an E2EE command waits for the crypto machine after a start.
CRYPTO_LOAD_WAIT_S = 30.0
#: A ``Messages`` read of at most this many rows is answered on the IPC
#: server's command thread (about 6 µs of SQLite and decoding per row here),
#: a bigger one on the cache thread (:meth:`Daemon.answer_now`).
INLINE_READ_ROWS = 100
#: Reply frames of small reads kept for reuse (:meth:`Daemon._messages_reply`).
REPLY_MEMO = 8


def _import_crypto() -> None:
    import skiffyd.matrix.crypto  # noqa: F401  (nio and vodozemac: a slow import)


def acquire_lock(paths: Paths) -> int:
    paths.ensure_private_dir(paths.runtime_dir)
    fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DaemonAlreadyRunningError(
            f"another skiffyd is already running for this user (lock {paths.lock_file})"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


#: How long SIGTERM waits for the outbox's item in flight.
SHUTDOWN_GRACE_S = 10.0

#: How long logging out a device the daemon lets go of (a login it cannot
#: keep, a device a new login replaces, a forgotten account's) waits for the
#: homeserver (:meth:`Daemon._server_logout`).
SERVER_LOGOUT_S = 10.0


def _watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec, when this process is the one watched."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


async def _watchdog(interval: float) -> None:
    # Pings come from the event loop itself: a wedged loop stops them.
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(interval)


class AccountSession:
    """Everything that exists only while an account is logged in."""

    def __init__(
        self, tokens: TokenManager, cache: Cache, reader: CacheReader, transport: Transport
    ) -> None:
        self.tokens = tokens
        self.cache = cache
        #: Small reads, on the IPC command thread (:meth:`Daemon.answer_now`)
        #: and the event loop, only under :attr:`Daemon.reads`.
        self.reader = reader
        self.transport = transport
        self.crypto: Crypto | None = None
        self.sync: SyncService | None = None
        self.outbox: OutboxService | None = None
        self.cancel_scope = trio.CancelScope()
        self.ending = False
        self.server_versions: list[str] = []
        self.crypto_service: CryptoService | None = None
        #: Set once loading the crypto machine ended, loaded or not.
        self.crypto_loaded = trio.Event()
        #: Set by the first sync that got through (the rooms are known).
        self.synced = trio.Event()

    @property
    def creds(self) -> Credentials:
        """The current credentials (the token manager replaces them on refresh)."""
        return self.tokens.creds


class Daemon:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.instance_id = uuid.uuid4().hex
        self.state: wire.SessionState = "logged_out"
        self.last_error: str | None = None
        self.session: AccountSession | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._session_lock = trio.Lock()
        #: The account being resumed at start, until its session exists.
        self._resuming: str | None = None
        #: What the kept-outbox note says, as last read or written (status).
        self._kept: tuple[str, int] | None = None
        self._backfill_locks: dict[str, trio.Lock] = {}
        self._sso_flows: dict[str, sso.SsoFlow] = {}
        self.settings = Settings()
        self._requests = 0
        #: Held around every use of the session's reader and of
        #: :attr:`_replies`, and while the session is set or cleared: the IPC
        #: server's command thread reads through them too (:meth:`answer_now`).
        #: Held only for work without an await, never for long.
        self.reads = threading.Lock()
        #: (room, limit) -> (the reader's answer, its reply frame): see
        #: :meth:`_messages_reply`; least recently used first.
        self._replies: OrderedDict[AnswerKey, tuple[MessagesAnswer, bytes]] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self.server = IpcServer(
            paths, self.handle, instance_id=self.instance_id, answer_now=self.answer_now
        )

    # ------------------------------------------------------------ plumbing

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking cache call on the one cache thread.

        If the call writes, the cache thread then makes again the answers
        UIs read last (:meth:`CacheReader.watched`), and the reader keeps
        them as current (:meth:`CacheReader.adopt`) before this returns: a
        UI that reads a room after the event telling it of the change (the
        events go out after this returns) gets its answer from memory.
        That is right only if nothing commits between the write and the
        adoption: the limiter is held across both, and every write to the
        cache goes through here.
        """
        s = self.session
        with self.reads:
            keys = s.reader.watched() if s is not None else []
        if not keys or s is None:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        async with self._limiter:
            result, answers = await trio.to_thread.run_sync(s.cache.run_then_answer, fn, args, keys)
            with self.reads:
                taken = s.reader.adopt(answers) if answers and self.session is s else []
        # And their reply frames, for the reads the events will bring (no
        # need for the limiter: a frame belongs to its answer object).
        with self.reads:
            if self.session is s:  # not closed meanwhile (that drops the frames)
                for key in taken:
                    if key[1] <= INLINE_READ_ROWS:
                        self._messages_reply(key, answers[key])
        return result

    def publish(self, events: Sequence[wire.Event]) -> None:
        if events:
            self.server.publish(events)

    def set_state(self, state: wire.SessionState, error: str | None = None) -> None:
        if state == self.state and error == self.last_error:
            return
        self.state = state
        self.last_error = error
        log.info("session.state", state=state, error=error)
        notify(f"STATUS={state}")
        seq = self.session.cache.last_seq if self.session else 0
        user_id = self.session.creds.user_id if self.session else None
        self.publish([wire.SessionStateChanged(seq=seq, state=state, user_id=user_id)])

    def require_session(self) -> AccountSession:
        if self.session is None:
            raise NotLoggedInError("not logged in: run `skiffyd login` first")
        return self.session

    # ---------------------------------------------------------------- run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Everything the daemon creates (cache, crypto store, pointer) is private.
        os.umask(0o077)
        settings = self._apply_settings()
        lock_fd = acquire_lock(self.paths)
        try:
            await trio.to_thread.run_sync(credentials.check_backend)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self.server.run)
                    await self._resume()
                    if self.session is None:
                        # Logged out: load nio now, off the event loop, so a
                        # login does not wait for it (a resumed session loads
                        # it itself, after the cache is served).
                        nursery.start_soon(trio.to_thread.run_sync, _import_crypto)
                    notify("READY=1", f"STATUS={self.state}", f"MAINPID={os.getpid()}")
                    log.info(
                        "daemon.ready",
                        pid=os.getpid(),
                        state=self.state,
                        credentials=settings.credentials_backend,
                    )
                    watchdog = _watchdog_interval()
                    if watchdog is not None:
                        nursery.start_soon(_watchdog, watchdog)
                    task_status.started()
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            self._reload()
                            continue
                        log.info("daemon.stopping", signal=signal.Signals(signum).name)
                        break
                    notify("STOPPING=1")
                    await self._shutdown()
                    nursery.cancel_scope.cancel()
        finally:
            os.close(lock_fd)
            log.info("daemon.stopped")

    def _apply_settings(self) -> Settings:
        settings = Settings.load(self.paths)
        credentials.configure(
            settings.credentials_backend,
            directory=self.paths.data_dir,
            passphrase_file=settings.passphrase_file,
        )
        if not os.environ.get("SKIFFY_LOG_LEVEL"):
            logs.configure(settings.log_level)
        self.settings = settings
        return settings

    def _reload(self) -> None:
        """SIGHUP: re-read the config; the log level applies at once."""
        try:
            new = Settings.load(self.paths)
        except ConfigError as exc:
            log.error("daemon.reload_failed", code=exc.code, reason=exc.message)
            return
        if not os.environ.get("SKIFFY_LOG_LEVEL"):
            logs.configure(new.log_level)
        if new.credentials_backend != self.settings.credentials_backend:
            log.warning("daemon.reload_credentials_deferred", takes_effect="next start")
        self.settings = new
        # A warning: it must show whatever level was just chosen.
        log.warning("daemon.reloaded", log_level=new.log_level)

    async def _shutdown(self) -> None:
        """Stop taking commands; let the item in flight finish, within the grace."""
        self.server.stop_accepting()
        session = self.session
        if session is not None and session.outbox is not None:
            session.outbox.draining = True
            with trio.move_on_after(SHUTDOWN_GRACE_S) as grace:
                await session.outbox.wait_idle()
            if grace.cancelled_caught:
                log.warning("daemon.grace_expired", in_flight=len(session.outbox.in_flight))
        # A sync transaction in progress commits: cache calls run to the end on
        # their thread even when their task is cancelled.
        await self._stop_session()

    async def _resume(self) -> None:
        kept = await trio.to_thread.run_sync(self._read_kept_note)
        user_id = self.paths.read_account_pointer()
        if user_id is None:
            if kept is not None:
                self.set_state("logged_out", _kept_message(kept[1]) + " (`skiffyd login`)")
            return
        if not user_id:
            return
        # Commands are served while the account resumes: status says whose
        # session is coming (a scrypt-protected credentials file takes a while).
        self._resuming = user_id
        self.set_state("connecting")
        try:
            creds = await trio.to_thread.run_sync(credentials.load, user_id)
            if creds is None:
                log.warning("daemon.no_credentials_for_account")
                self.set_state(
                    "logged_out",
                    "the credentials store has nothing for the stored account: log in again",
                )
                return
            await self._start_session(creds)
        except SkiffyError as exc:
            # Stay up: status must be able to say what is wrong.
            log.error("daemon.resume_failed", code=exc.code)
            self.set_state("logged_out", exc.message)
        finally:
            self._resuming = None

    async def _start_session(self, creds: Credentials) -> None:
        assert self._nursery is not None
        account_dir = self.paths.account_dir(creds.user_id)
        await trio.to_thread.run_sync(self._finish_swap, creds)
        self.paths.ensure_private_dir(account_dir)
        cache = await self.db(Cache.open, account_dir / "cache.db", creds.cache_key, creds.user_id)
        try:
            reader = await self.db(cache.open_reader, creds.cache_key)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.db(cache.close)
            raise
        transport = Transport(creds.homeserver)
        tokens = TokenManager(
            creds,
            transport=transport,
            save=self._save_credentials,
            on_expired=lambda exc: self._session_expired(session, exc),
        )
        transport.auth = tokens
        session = AccountSession(tokens, cache, reader, transport)
        # The cache is served from here on: reads do not wait for the crypto
        # machine (loading nio and its store is most of a warm start), only
        # the network services do (:meth:`_run_session`).
        with self.reads:
            self.session = session
        # The instance id names the change log: the same across restarts (UIs
        # catch up by seq), new with a new cache (UIs are told to reload).
        self.instance_id = await self.db(lambda: cache.log_id)
        self.server.instance_id = self.instance_id
        session.outbox = OutboxService(
            transport=transport, cache=cache, db=self.db, publish=self.publish
        )
        session.sync = SyncService(
            transport=transport,
            cache=cache,
            db=self.db,
            publish=self.publish,
            set_state=self.set_state,
            on_synced=lambda: self._synced(session),
            own_user_id=creds.user_id,
        )
        self.set_state("connecting")
        await self._nursery.start(self._run_session, session, account_dir / "crypto")

    @staticmethod
    def _synced(session: AccountSession) -> None:
        assert session.outbox is not None
        session.outbox.homeserver_reachable()
        session.synced.set()

    async def _take_carried(self, session: AccountSession) -> None:
        """After the first sync: what an ended session's outbox left goes into
        this one's (:meth:`Cache.take_carried`)."""
        await session.synced.wait()
        events = await self.db(session.cache.take_carried, int(time.time() * 1000))
        if events:
            log.info("outbox.carried_in")
            self.publish(events)
            assert session.outbox is not None
            session.outbox.wake()

    async def _load_crypto(self, session: AccountSession, store_dir: Path) -> bool:
        """nio's Olm machine, on a worker thread (its import alone takes a while)."""
        creds = session.creds

        def load() -> Crypto:
            from skiffyd.matrix.crypto import Crypto

            return Crypto.load(
                store_dir,
                user_id=creds.user_id,
                device_id=creds.device_id,
                access_token=creds.access_token,
                pickle_key=creds.pickle_key,
            )

        try:
            crypto = await trio.to_thread.run_sync(load)
        except Exception as exc:  # nio's store raises its own (SQLite, unpickling)
            session.crypto_loaded.set()
            # Reads go on from the cache; nothing is sent or synced without
            # the machine (plaintext must never go into an encrypted room).
            code = exc.code if isinstance(exc, SkiffyError) else type(exc).__name__
            log.error("session.crypto_failed", code=code)
            self.set_state("offline", f"the encryption store did not load ({code})")
            return False
        from skiffyd.matrix.crypto import CryptoService

        cache = session.cache
        service = CryptoService(
            crypto,
            transport=session.transport,
            db=self.db,
            publish=self.publish,
            seq=lambda: cache.last_seq,
        )
        session.crypto, session.crypto_service = crypto, service
        assert session.outbox is not None
        assert session.sync is not None
        session.outbox.crypto = session.sync.crypto = service
        session.crypto_loaded.set()
        return True

    async def _run_session(
        self,
        session: AccountSession,
        crypto_dir: Path,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        assert session.sync is not None
        assert session.outbox is not None
        # Started from a command (login): not that command's log context.
        structlog.contextvars.clear_contextvars()
        task_status.started()
        try:
            with session.cancel_scope:
                if not await self._load_crypto(session, crypto_dir):
                    return
                assert session.crypto_service is not None
                async with trio.open_nursery() as nursery:
                    await nursery.start(session.outbox.run)
                    await nursery.start(session.sync.run)
                    await nursery.start(session.crypto_service.run)
                    nursery.start_soon(self._decrypt_waiting, session)
                    nursery.start_soon(self._learn_server, session)
                    nursery.start_soon(self._take_carried, session)
        except* SessionExpiredError as group:
            # Services run in a nursery: their errors arrive as a group.
            expired = group.exceptions[0]
            assert isinstance(expired, SessionExpiredError)
            await self._end_expired_session(session, expired)

    async def _save_credentials(self, creds: Credentials) -> None:
        with trio.CancelScope(shield=True):  # never half-rotated
            await trio.to_thread.run_sync(credentials.save, creds)

    def _session_expired(self, session: AccountSession, exc: SessionExpiredError) -> None:
        """Called from wherever a request found the session dead."""
        if self._nursery is not None and not session.ending:
            self._nursery.start_soon(self._end_expired_session, session, exc)

    async def _end_expired_session(self, session: AccountSession, exc: SessionExpiredError) -> None:
        if session.ending or self.session is not session:
            return
        session.ending = True
        user_id = session.creds.user_id
        seq = session.cache.last_seq
        async with self._session_lock:
            if self.session is not session:
                return  # a logout got there first
            log.warning("session.expired", revoked=exc.revoked)
            try:
                unsent = await self.db(session.cache.unsent_messages)
            except CacheError:
                unsent = 0
            await self._close_session(session)
            if exc.revoked:
                # Logged out elsewhere: these credentials will never work again.
                await trio.to_thread.run_sync(self._write_pointer, None)
                if unsent:
                    # Unless the outbox holds something: the cache (and its
                    # key) stay for the account's next login to carry it over.
                    retired = msgspec.structs.replace(
                        session.creds, access_token="", refresh_token=None, expires_at_ms=None
                    )
                    await trio.to_thread.run_sync(credentials.save, retired)
                    await trio.to_thread.run_sync(self._write_kept_note, user_id, unsent)
                    log.warning("session.outbox_kept", items=unsent)
                else:
                    await trio.to_thread.run_sync(credentials.delete, user_id)
                    account_dir = self.paths.account_dir(user_id)
                    await trio.to_thread.run_sync(
                        lambda: shutil.rmtree(account_dir, ignore_errors=True)
                    )
        message = exc.message
        if unsent:
            message += "; " + _kept_message(unsent)
        self.publish(
            [wire.SessionExpired(seq=seq, user_id=user_id, revoked=exc.revoked, message=message)]
        )
        self.set_state("logged_out", message + " (`skiffyd login`)")

    async def _verify(
        self, request: wire.VerifyStart | wire.VerifyAccept | wire.VerifyConfirm | wire.VerifyCancel
    ) -> wire.VerificationResult:
        service = await self._crypto_service()
        book = service.crypto.verification
        if isinstance(request, wire.VerifyStart):
            check_user_id(request.user_id)
            info = await service.verify(book.start, request.user_id, request.device_id)
        else:
            step = {
                wire.VerifyAccept: book.accept,
                wire.VerifyConfirm: book.confirm,
                wire.VerifyCancel: book.cancel,
            }[type(request)]
            info = await service.verify(step, request.transaction_id)
        return wire.VerificationResult(verification=info)

    async def _crypto_service(self) -> CryptoService:
        """The session's crypto service, waiting (a little) for it to load after a start."""
        s = self.require_session()
        with trio.move_on_after(CRYPTO_LOAD_WAIT_S):
            await s.crypto_loaded.wait()
        if s.crypto_service is None:
            raise SkiffyError(
                "the encryption store is not loaded yet (or failed to load: see status)",
                code=wire.ErrorCode.CRYPTO_NOT_READY,
            )
        return s.crypto_service

    async def _import_keys(self, request: wire.KeysImport) -> wire.KeysImportResult:
        s = self.require_session()
        crypto = (await self._crypto_service()).crypto
        added, skipped = await self.db(crypto.import_sessions, request.sessions)
        decrypted = 0
        if added:
            before = await self.db(s.cache.undecrypted_count)
            self.publish(await self.db(s.cache.apply_decrypted, crypto, added))
            decrypted = before - await self.db(s.cache.undecrypted_count)
        log.info("crypto.keys_imported", imported=len(added), skipped=skipped)
        return wire.KeysImportResult(imported=len(added), skipped=skipped, decrypted=decrypted)

    async def _decrypt_waiting(self, session: AccountSession) -> None:
        """Rows whose key came while the daemon was down (or imported): read them."""
        crypto = session.crypto
        assert crypto is not None
        waiting = await self.db(session.cache.undecrypted_sessions)
        keys = [
            (room_id, session_id)
            for room_id, sender_key, session_id in waiting
            if await self.db(crypto.has_session, room_id, sender_key, session_id)
        ]
        if keys:
            self.publish(await self.db(session.cache.apply_decrypted, crypto, keys))

    async def _learn_server(self, session: AccountSession) -> None:
        """The server's spec versions, for status; retried until it answers."""
        while True:
            try:
                session.server_versions = await matrix_session.versions(session.transport)
                return
            except MatrixError:
                await trio.sleep(30)

    async def _close_session(self, session: AccountSession) -> None:
        session.cancel_scope.cancel()
        with self.reads:  # no read is running on the reader, and none will
            if self.session is session:
                self.session = None
            session.reader.close()
            self._replies.clear()  # its answers' frames: nothing of it stays in memory
        with trio.CancelScope(shield=True):
            await self.db(session.cache.close)
            if session.crypto is not None:
                await trio.to_thread.run_sync(session.crypto.close)
            await session.transport.aclose()

    async def _stop_session(self) -> None:
        if self.session is not None:
            await self._close_session(self.session)

    # ----------------------------------------------------------- commands

    def answer_now(self, request: wire.Request) -> bytes | None:
        """The reply frame to a small ``Messages`` read, made at once; None:
        the command takes the usual way (:meth:`handle`, in a task of its own
        on the event loop).

        Called by the IPC server on its command thread, the moment a request
        is decoded, not on the event loop: a task and the hops to the event
        loop and to the cache thread cost more than such a read
        (docs/benchmarks-ipc.md). The read goes through the session's reader,
        which sees the last committed state even while a sync's transaction
        is open on the cache thread (WAL); if SQLite is busy the command takes
        the usual way. When the reader reuses an answer (the same object:
        nothing was committed since), so is its reply frame
        (:meth:`_messages_reply`). Everything here runs under :attr:`reads`,
        which the event loop holds while it adopts answers or sets or clears
        the session; the rest of the daemon's state is not touched.
        """
        if not isinstance(request, wire.Messages) or request.limit > INLINE_READ_ROWS:
            return None
        check_room_id(request.room_id)
        room_id, limit = request.room_id, max(1, request.limit)
        with self.reads:
            s = self.session
            if s is None:
                return None
            try:
                answer = s.reader.read(lambda c: c.messages(room_id, limit))
            except ReaderBusy:
                log.info("cache.reader_busy", cmd="messages")
                return None
            return self._messages_reply((room_id, limit), answer)

    def _messages_reply(self, key: AnswerKey, answer: MessagesAnswer) -> bytes:
        """The reply frame of ``answer``, made once per answer object.

        The reader hands out the same answer object for as long as it
        reuses it (and never changes one), so a frame made from it stays
        right; the memo holds the answer itself, so its identity cannot
        pass to a new object. At most :data:`REPLY_MEMO` frames, the most
        recently used, each of at most :data:`INLINE_READ_ROWS` messages.
        """
        memo = self._replies.get(key)
        if memo is not None and memo[0] is answer:
            self._replies.move_to_end(key)
            return memo[1]
        messages, gaps = answer
        frame = codec.result_reply(wire.MessagesResult(messages=messages, gaps=gaps))
        self._replies[key] = (answer, frame)
        self._replies.move_to_end(key)
        while len(self._replies) > REPLY_MEMO:
            self._replies.popitem(last=False)
        return frame

    async def handle(self, request: wire.Request) -> wire.Result:
        """One IPC command; its log lines carry a request id and the command."""
        self._requests += 1
        with structlog.contextvars.bound_contextvars(
            request_id=f"{self._requests:x}", cmd=type(request).__struct_config__.tag
        ):
            return await self._dispatch(request)

    async def _dispatch(self, request: wire.Request) -> wire.Result:
        match request:
            case wire.Hello():
                return self._hello(request)
            case wire.Status():
                return await self._status()
            case wire.Login():
                return await self._login(request)
            case wire.SsoStart():
                return await self._sso_start(request)
            case wire.SsoFinish():
                return await self._sso_finish(request)
            case wire.Logout():
                await self._logout(
                    keep_cache=request.keep_cache, discard_outbox=request.discard_outbox
                )
                return wire.OkResult()
            case wire.ForgetAccount():
                return await self._forget_account(request)
            case wire.Rooms():
                s = self.require_session()
                return wire.RoomsResult(rooms=await self.db(s.cache.rooms))
            case wire.Messages():
                s = self.require_session()
                check_room_id(request.room_id)
                limit = max(1, min(request.limit, 1000))
                messages, gaps = await self.db(s.cache.messages, request.room_id, limit)
                return wire.MessagesResult(messages=messages, gaps=gaps)
            case wire.Members():
                s = self.require_session()
                check_room_id(request.room_id)
                return wire.MembersResult(
                    members=await self.db(
                        lambda: s.cache.members(request.room_id, include_left=request.all)
                    )
                )
            case wire.Backfill():
                return await self._backfill(request)
            case wire.Send():
                return await commands.send(self, request)
            case wire.Edit():
                return await commands.edit(self, request)
            case wire.Redact():
                return await commands.redact(self, request)
            case wire.React():
                return await commands.react(self, request)
            case wire.Unreact():
                return await commands.unreact(self, request)
            case wire.MarkRead():
                return await commands.mark_read(self, request)
            case wire.SetTyping():
                return await commands.set_typing(self, request)
            case wire.CreateRoom():
                return await commands.create_room(self, request)
            case wire.Leave():
                return await commands.leave(self, request)
            case wire.Forget():
                return await commands.forget(self, request)
            case wire.Invite() | wire.Kick() | wire.Ban():
                return await commands.membership(self, request)
            case wire.OpenDirect():
                return await commands.open_direct(self, request)
            case wire.GetProfile():
                return await commands.get_profile(self, request)
            case wire.SetDisplayName():
                return await commands.set_display_name(self, request)
            case wire.SearchUsers():
                return await commands.search_users(self, request)
            case wire.OutboxList():
                return await commands.outbox_list(self, request)
            case wire.OutboxRetry():
                return await commands.outbox_retry(self, request)
            case wire.OutboxCancel():
                return await commands.outbox_cancel(self, request)
            case wire.Join():
                return await self._join(request)
            case wire.Devices():
                s = self.require_session()
                user_id = request.user_id or s.creds.user_id
                check_user_id(user_id)
                service = await self._crypto_service()
                return wire.DevicesResult(user_id=user_id, devices=await service.devices(user_id))
            case wire.KeysExport():
                machine = (await self._crypto_service()).crypto
                log.info("crypto.keys_exported")
                return wire.KeysExportResult(sessions=await self.db(machine.export_sessions))
            case wire.KeysImport():
                return await self._import_keys(request)
            case wire.Verifications():
                service = await self._crypto_service()
                return wire.VerificationsResult(verifications=await service.publish_verifications())
            case (
                wire.VerifyStart()
                | wire.VerifyAccept()
                | wire.VerifyConfirm()
                | (wire.VerifyCancel())
            ):
                return await self._verify(request)
            case wire.ChangesSince():
                if self.session is None:
                    return wire.ChangesResult(
                        events=[], last_seq=0, reset=request.seq > 0, instance_id=self.instance_id
                    )
                if request.instance_id is not None and request.instance_id != self.instance_id:
                    # The seq belongs to another change log: reload.
                    return wire.ChangesResult(
                        events=[],
                        last_seq=self.session.cache.last_seq,
                        reset=True,
                        instance_id=self.instance_id,
                    )
                limit = max(1, min(request.limit, 10_000))
                changes = await self.db(self.session.cache.changes_since, request.seq, limit)
                changes.instance_id = self.instance_id
                return changes
        raise SkiffyError("unknown command", code=wire.ErrorCode.IPC_UNKNOWN_COMMAND)

    def _hello(self, request: wire.Hello) -> wire.HelloResult:
        if request.protocol_version != wire.PROTOCOL_VERSION:
            raise SkiffyError(
                f"protocol version {request.protocol_version} is not supported "
                f"(this daemon speaks {wire.PROTOCOL_VERSION})",
                code=wire.ErrorCode.IPC_VERSION_MISMATCH,
            )
        return wire.HelloResult(
            protocol_version=wire.PROTOCOL_VERSION,
            instance_id=self.instance_id,
            last_seq=self.session.cache.last_seq if self.session else 0,
        )

    async def _status(self) -> wire.StatusResult:
        s = self.session
        if s is None:
            return self._status_result(0)
        try:  # the reader: an answer even while a long sync holds the cache thread
            with self.reads:
                pending = s.reader.read(CacheReads.outbox_count)
        except ReaderBusy:
            pending = await self.db(s.cache.outbox_count)
        return self._status_result(pending)

    def _status_result(self, pending: int) -> wire.StatusResult:
        s = self.session
        return wire.StatusResult(
            state=self.state,
            user_id=s.creds.user_id if s else self._resuming,
            homeserver=s.creds.homeserver if s else None,
            device_id=s.creds.device_id if s else None,
            last_seq=s.cache.last_seq if s else 0,
            instance_id=self.instance_id,
            pid=os.getpid(),
            pending_outbox=pending,
            last_error=self.last_error,
            full_syncs=s.sync.full_syncs if s and s.sync else 0,
            syncs=s.sync.syncs if s and s.sync else 0,
            server_versions=s.server_versions if s else [],
            uses_refresh_token=bool(s and s.creds.refresh_token),
            token_expires_at_ms=s.creds.expires_at_ms if s else None,
            token_refreshes=s.tokens.refreshes if s else 0,
            device_fingerprint=s.crypto.fingerprint if s and s.crypto else None,
            keys_uploaded=bool(s and s.crypto_service and s.crypto_service.keys_uploaded),
            kept_outbox=None
            if self._kept is None
            else wire.KeptOutbox(user_id=self._kept[0], items=self._kept[1]),
        )

    def _refuse_if_logged_in(self) -> None:
        if self.session is not None:
            raise SkiffyError(
                f"already logged in as {self.session.creds.user_id}: log out first",
                code=wire.ErrorCode.SESSION_ALREADY_LOGGED_IN,
            )

    async def _login(self, request: wire.Login) -> wire.LoginResult:
        async with self._session_lock:
            self._refuse_if_logged_in()
            homeserver = normalize_homeserver(request.homeserver)
            return await self._login_with(
                homeserver,
                lambda t: matrix_session.password_login(t, request.user, request.password),
            )

    async def _login_with(
        self, homeserver: str, login: Callable[[Transport], Awaitable[LoginResponse]]
    ) -> wire.LoginResult:
        """Log in (password or token), store the credentials, start the session."""
        # A failed login leaves the state as it was, with its explanation
        # (say, that a kept outbox waits for this login).
        previous = (self.state, self.last_error)
        self.set_state("connecting")
        transport = Transport(homeserver)
        try:
            response = await login(transport)
        except BaseException:
            self.set_state(*previous)
            raise
        finally:
            await transport.aclose()
        creds = Credentials(
            homeserver=homeserver,
            user_id=response.user_id,
            device_id=response.device_id,
            access_token=response.access_token,
            refresh_token=response.refresh_token,
            expires_at_ms=(
                int(time.time() * 1000) + response.expires_in_ms if response.expires_in_ms else None
            ),
            cache_key=Credentials.new_cache_key(),
            pickle_key=Credentials.new_pickle_key(),
        )
        # A new device starts with a new cache. What the outbox of an ended
        # session of this account left is carried into it (stashed in the new
        # cache, made beside the old one, before the old one's key is
        # overwritten); the rest of the old cache goes.
        account_dir = self.paths.account_dir(creds.user_id)
        new_dir: Path | None = None
        try:
            old, carried = await trio.to_thread.run_sync(self._kept_for, creds.user_id)
            if carried:
                new_dir = _swap_dir(account_dir)
                await trio.to_thread.run_sync(lambda: shutil.rmtree(new_dir, ignore_errors=True))
                self.paths.ensure_private_dir(new_dir)

                def stash() -> None:
                    assert new_dir is not None
                    cache = Cache.open(new_dir / "cache.db", creds.cache_key, creds.user_id)
                    try:
                        cache.stash_carried(carried)
                    finally:
                        cache.close()

                await self.db(stash)
                log.info("session.outbox_carried", items=len(carried))
            elif account_dir.exists():
                await trio.to_thread.run_sync(shutil.rmtree, account_dir)
            await trio.to_thread.run_sync(credentials.save, creds)
        except BaseException:
            # Nothing of ours holds the new device: the old credentials record
            # (and with it the key to a kept outbox) is as it was.
            with trio.CancelScope(shield=True):
                await self._abandon_device(homeserver, creds, new_dir)
            self.set_state(*previous)
            raise
        try:
            await trio.to_thread.run_sync(self._write_pointer, creds.user_id)
            await self._start_session(creds)  # finishes the swap first
        except (SkiffyError, OSError) as exc:
            # The credentials are stored: as when a start cannot resume them,
            # the state says why (the next start, or login, tries again).
            if isinstance(exc, SkiffyError):
                code, message = exc.code, exc.message
            else:
                code = type(exc).__name__
                message = f"the session could not start ({exc.strerror or code}): log in again"
            log.error("session.start_failed", code=code)
            self.set_state("logged_out", message)
            raise
        kept = await trio.to_thread.run_sync(self._read_kept_note)
        if kept is not None and kept[0] == creds.user_id:
            await trio.to_thread.run_sync(self._write_kept_note, None, 0)
        log.info("session.logged_in", device_id=creds.device_id)
        if old is not None and old.device_id != creds.device_id:
            # The device this account had here (an expired session, or one
            # that could not start) is replaced: its crypto store is gone, so
            # it would only linger in the account's device list, and other
            # devices would go on encrypting for it.
            assert self._nursery is not None
            self._nursery.start_soon(
                self._server_logout, old.homeserver, old.access_token, "replaced_device"
            )
        return wire.LoginResult(
            user_id=creds.user_id, device_id=creds.device_id, homeserver=homeserver
        )

    async def _abandon_device(
        self, homeserver: str, creds: Credentials, new_dir: Path | None
    ) -> None:
        """Undo a login whose credentials could not be kept: log the new
        device out on the homeserver (else it stays in the account's device
        list with a token nobody has) and remove the new cache a carry-over
        made for it."""
        await self._server_logout(homeserver, creds.access_token, "undone_login")
        if new_dir is not None:
            await trio.to_thread.run_sync(lambda: shutil.rmtree(new_dir, ignore_errors=True))

    async def _server_logout(self, homeserver: str, access_token: str, of: str) -> None:
        """Log out the device ``access_token`` belongs to, on the homeserver,
        within :data:`SERVER_LOGOUT_S`; a failure is logged, not raised (a
        token that is already dead, a homeserver that cannot be reached)."""
        if not access_token:
            return  # a retired record: its device is gone already
        transport = Transport(homeserver, access_token=access_token)
        try:
            with trio.move_on_after(SERVER_LOGOUT_S) as waited:
                await matrix_session.logout(transport)
                log.info("session.server_logout", of=of)
            if waited.cancelled_caught:
                log.warning("session.server_logout_failed", of=of, code="timeout")
        except MatrixError as exc:
            log.warning("session.server_logout_failed", of=of, code=exc.code)
        finally:
            await transport.aclose()

    async def _sso_start(self, request: wire.SsoStart) -> wire.SsoStartResult:
        self._refuse_if_logged_in()
        assert self._nursery is not None
        homeserver = normalize_homeserver(request.homeserver)
        transport = Transport(homeserver)
        try:
            flows = await matrix_session.login_flows(transport)
        finally:
            await transport.aclose()
        if "m.login.sso" not in flows or "m.login.token" not in flows:
            raise SkiffyError(
                "this homeserver offers no single sign-on (m.login.sso)",
                code=wire.ErrorCode.SESSION_LOGIN_FAILED,
                details={"flows": sorted(flows)},
            )
        timeout = max(10, min(request.timeout_s, 3600))
        flow, listener = await sso.open_flow(homeserver, timeout)
        self._sso_flows[flow.flow_id] = flow
        self._nursery.start_soon(self._serve_sso_flow, flow, listener)
        log.info("sso.started", port=flow.port)
        return wire.SsoStartResult(flow_id=flow.flow_id, url=flow.login_url, timeout_s=timeout)

    async def _serve_sso_flow(self, flow: sso.SsoFlow, listener: trio.SocketListener) -> None:
        await sso.serve_flow(flow, listener)
        # A flow nobody finishes does not keep its token: gone a minute later.
        await trio.sleep(60)
        self._sso_flows.pop(flow.flow_id, None)

    async def _sso_finish(self, request: wire.SsoFinish) -> wire.LoginResult:
        flow = self._sso_flows.get(request.flow_id)
        if flow is None:
            raise SkiffyError(
                "no such single sign-on flow (it finished or timed out)",
                code=wire.ErrorCode.SESSION_LOGIN_FAILED,
            )
        try:
            await flow.done.wait()
            if flow.token is None:
                raise SkiffyError(
                    f"single sign-on did not complete: {flow.failed}",
                    code=wire.ErrorCode.SESSION_LOGIN_FAILED,
                )
            token = flow.token
            async with self._session_lock:
                self._refuse_if_logged_in()
                return await self._login_with(
                    flow.homeserver, lambda t: matrix_session.token_login(t, token)
                )
        finally:
            self._sso_flows.pop(request.flow_id, None)

    def _kept_for(self, user_id: str) -> tuple[Credentials | None, list[tuple[OutboxItem, bool]]]:
        """The credentials record kept for ``user_id`` (None: none), and what
        the outbox of that earlier session left (revoked or expired, its
        credentials and cache kept), or nothing. A cache that cannot be read
        gives nothing, and the login goes on (and removes it). A credentials
        store that fails raises: the login fails before it removes anything
        (it could not save its own credentials either).

        A login killed after it saved its credentials and before it wrote the
        account pointer left its new cache beside the old directory, and no
        start resumes it (no pointer): the swap is finished here first, so
        the stash is read with the key that was stored with it."""
        old = credentials.load(user_id)
        if old is not None:
            self._finish_swap(old)
        path = self.paths.account_dir(user_id) / "cache.db"
        if old is None or not path.exists():
            return old, []
        try:
            reader = CacheReader.open(path, old.cache_key)
            try:
                return old, reader.carry_out()
            finally:
                reader.close()
        except (SkiffyError, apsw.Error) as exc:
            code = exc.code if isinstance(exc, SkiffyError) else type(exc).__name__
            log.warning("session.outbox_not_carried", code=code)
            return old, []

    def _finish_swap(self, creds: Credentials) -> None:
        """A login that carried an outbox over made the new cache beside the
        old account directory: put it in its place, if it is this session's
        (it opens with ``creds``' key). One that does not is what a login
        left that crashed before it saved its credentials: removed, and the
        old directory stays for the next login to carry over again."""
        account_dir = self.paths.account_dir(creds.user_id)
        new_dir = _swap_dir(account_dir)
        if not new_dir.exists():
            return
        db = new_dir / "cache.db"
        if not db.exists() or db.stat().st_size == 0:
            # Crashed before the new cache had a page: any key "opens" an
            # empty file, so this is never taken for a finished one.
            shutil.rmtree(new_dir, ignore_errors=True)
            return
        try:
            CacheReader.open(db, creds.cache_key, KEYINGS[:1]).close()
        except CacheWrongKeyError:
            # Anything else (a disk error) is raised: the start fails and
            # nothing is removed.
            shutil.rmtree(new_dir, ignore_errors=True)
            return
        shutil.rmtree(account_dir, ignore_errors=True)
        new_dir.rename(account_dir)

    def _write_kept_note(self, user_id: str | None, items: int) -> None:
        text = None if user_id is None else json.dumps({"user_id": user_id, "items": items})
        self._write_state_file(self.paths.kept_outbox_note, text)
        self._kept = None if user_id is None else (user_id, items)

    def _read_kept_note(self) -> tuple[str, int] | None:
        try:
            self._kept = self.paths.read_kept_outbox()
        except (ValueError, OSError):
            # Only a note: the kept cache itself is what carries the items.
            log.warning("daemon.kept_outbox_note_unreadable")
            self._kept = None
        return self._kept

    def _write_pointer(self, user_id: str | None) -> None:
        self._write_state_file(self.paths.account_pointer, user_id)

    def _write_state_file(self, path: Path, text: str | None) -> None:
        """``text`` (and a newline) into ``path`` in the state directory,
        atomically; None removes it."""
        self.paths.ensure_private_dir(self.paths.state_dir)
        if text is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)

    async def _logout(self, *, keep_cache: bool = False, discard_outbox: bool = False) -> None:
        async with self._session_lock:
            session = self.require_session()
            creds = session.creds
            unsent = await self.db(session.cache.unsent_messages)
            if unsent and not discard_outbox:
                raise _would_lose(
                    unsent,
                    f"{_items(unsent, 'message')} in the outbox would be lost: let them be "
                    "sent (`skiffyd outbox list`), cancel them, or log out with --discard-outbox",
                )
            if unsent:
                log.warning("session.outbox_discarded", items=unsent)
            try:
                await matrix_session.logout(session.transport)
            except MatrixError as exc:
                # The server may be unreachable or the token already gone; the
                # local state is removed either way, and the user is told.
                log.warning("session.server_logout_failed", of="logout", code=exc.code)
            await self._close_session(session)
            await trio.to_thread.run_sync(credentials.delete, creds.user_id)
            await trio.to_thread.run_sync(self._write_pointer, None)
            if not keep_cache:
                account_dir: Path = self.paths.account_dir(creds.user_id)
                await trio.to_thread.run_sync(
                    lambda: shutil.rmtree(account_dir, ignore_errors=True)
                )
            self.set_state("logged_out")
            log.info("session.logged_out")

    async def _forget_account(self, request: wire.ForgetAccount) -> wire.ForgetAccountResult:
        """Remove what is kept for an account that is not logged in: its data
        directory, its credentials record, and the pointer and kept-outbox
        note when they name it. Unsent messages a revoked session kept for
        the account's next login are counted first (what that login would
        carry over) and only go with ``discard_outbox``."""
        user_id = check_user_id(request.user_id)
        async with self._session_lock:
            if self._resuming == user_id or (
                self.session is not None and self.session.creds.user_id == user_id
            ):
                raise SkiffyError(
                    "that account is logged in now: `skiffyd logout` ends its session",
                    code=wire.ErrorCode.SESSION_ALREADY_LOGGED_IN,
                )
            account_dir = self.paths.account_dir(user_id)
            # A credentials store that fails raises here, before anything goes.
            old, carried = await trio.to_thread.run_sync(self._kept_for, user_id)
            items = len(carried)
            if items and not request.discard_outbox:
                raise _would_lose(
                    items,
                    f"{_items(items, 'unsent outbox item')} kept for this account's next login "
                    "would be lost: log in to send them, or forget it with --discard-outbox",
                )

            def forget() -> tuple[bool, bool]:
                """Whether anything was kept; whether the state's note or
                pointer named the account."""
                found = named = False
                for path in (account_dir, _swap_dir(account_dir)):
                    if path.exists():
                        found = True
                        shutil.rmtree(path)
                if old is not None:
                    found = True
                    credentials.delete(user_id)
                kept = self._read_kept_note()
                if kept is not None and kept[0] == user_id:
                    found = named = True
                    self._write_kept_note(None, 0)
                if self.paths.read_account_pointer() == user_id:
                    found = named = True
                    self._write_pointer(None)
                return found, named

            if old is not None:
                # Its device, if its token still works (a session that could
                # not start), would otherwise stay with a token nobody holds.
                await self._server_logout(old.homeserver, old.access_token, "forgotten_account")
            found, named = await trio.to_thread.run_sync(forget)
            if named and self.session is None:
                # What status said about that account is no longer true.
                self.set_state("logged_out")
            if items:
                log.warning("session.outbox_discarded", items=items)
            log.info("session.account_forgotten", found=found)
            return wire.ForgetAccountResult(found=found, discarded=items)

    async def _backfill(self, request: wire.Backfill) -> wire.BackfillResult:
        s = self.require_session()
        check_room_id(request.room_id)
        if not await self.db(s.cache.has_room, request.room_id):
            raise UnknownRoomError(
                "no such room in the cache", details={"room_id": request.room_id}
            )
        limit = max(1, min(request.limit, 10_000))
        # One backfill per room at a time: two would fetch the same gap.
        lock = self._backfill_locks.setdefault(request.room_id, trio.Lock())
        async with lock:
            outcome = await history.backfill(
                transport=s.transport,
                cache=s.cache,
                db=self.db,
                publish=self.publish,
                room_id=request.room_id,
                limit=limit,
                decrypt=s.crypto.decrypt if s.crypto is not None else None,
            )
        return wire.BackfillResult(
            added=outcome.added, fetched=outcome.fetched, reached_start=outcome.reached_start
        )

    async def _join(self, request: wire.Join) -> wire.JoinResult:
        s = self.require_session()
        check_room_id_or_alias(request.room)
        return wire.JoinResult(room_id=await self.join_room(s, request.room))

    async def join_room(self, s: AccountSession, room: str) -> str:
        room_id = await matrix_session.join(s.transport, room)
        # Known encrypted at once, not at the next sync: a message sent
        # right after the join must not go out in plaintext.
        encrypted = False
        if s.crypto_service is not None:
            try:
                encrypted = await s.crypto_service.room_encryption(room_id)
            except MatrixError as exc:
                log.info("join.encryption_unknown", code=exc.code)
        self.publish(await self.db(lambda: s.cache.note_joined(room_id, encrypted=encrypted)))
        return room_id


async def serve(paths: Paths | None = None) -> None:
    daemon = Daemon(paths or Paths.from_env())
    await daemon.run()


def _swap_dir(account_dir: Path) -> Path:
    """Where a login that carries an outbox over makes its new cache."""
    return account_dir.with_name(account_dir.name + ".new")


def _items(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _would_lose(items: int, message: str) -> SkiffyError:
    """The refusal of a command that would drop ``items`` unsent outbox items."""
    return SkiffyError(message, code=wire.ErrorCode.OUTBOX_NOT_EMPTY, details={"items": items})


def _kept_message(items: int) -> str:
    # No user id: the state's error is logged, and logs name users only by
    # pseudonym. Said of a revoked session and of an expired one alike.
    return f"{_items(items, 'unsent outbox item')} kept: the account's next login sends them"
