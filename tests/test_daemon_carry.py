"""The daemon's side of carrying an outbox over at login (finishing or
undoing the swap of the new cache into the account directory after a
crash), of a login it cannot keep, and of forgetting an account."""

from __future__ import annotations

import secrets
import shutil
from typing import TYPE_CHECKING

import pytest

from ipc_schema import KeptOutbox, Status, StatusResult
from skiffyd import credentials
from skiffyd.cache import Cache
from skiffyd.cache.store import CacheReader
from skiffyd.credentials import Credentials
from skiffyd.daemon import Daemon, _swap_dir
from skiffyd.errors import CredentialsError
from tests.ipc.conftest import short_paths

if TYPE_CHECKING:
    from pathlib import Path

    from skiffyd.core.wire import LoginResponse
    from skiffyd.matrix.transport import Transport

ME = "@me:x"


def _creds(cache_key: str) -> Credentials:
    return Credentials(
        homeserver="http://127.0.0.1:1",
        user_id=ME,
        device_id="DEV",
        access_token="tok",
        cache_key=cache_key,
        pickle_key="p",
    )


async def _accepted(transport: Transport) -> LoginResponse:
    """A login the homeserver accepted (the login callable of ``_login_with``)."""
    from skiffyd.core.wire import LoginResponse

    return LoginResponse(user_id=ME, access_token="new", device_id="NEW")


def _cache_with_queued(path: Path, key: str, count: int) -> None:
    """An ended session's cache at ``path``: ``count`` messages queued in a
    joined room (txn ids t1, t2, ...)."""
    from skiffyd.core.sync import RoomSync, SyncPlan
    from tests.cache.test_store import _send

    cache = Cache.open(path, key, ME)
    cache.apply_sync(SyncPlan(next_batch="s", rooms=[RoomSync("!a:x", {"membership": "join"})]))
    for n in range(1, count + 1):
        _send(cache, f"queued when the session ended, {n}", f"t{n}", "!a:x")
    cache.close()


def _cache_with(path: Path, key: str, marker: str) -> None:
    c = Cache.open(path, key, ME)
    c._conn.execute("INSERT INTO meta(key, value) VALUES ('test_marker', ?)", (marker,))
    c.close()


def _marker(path: Path, key: str) -> str:
    c = Cache.open(path, key, ME)
    try:
        return str(c._scalar("SELECT value FROM meta WHERE key = 'test_marker'"))
    finally:
        c.close()


def test_a_swap_whose_credentials_were_saved_is_finished(tmp_path: Path) -> None:
    daemon = Daemon(short_paths(tmp_path))
    old_key, new_key = secrets.token_hex(32), secrets.token_hex(32)
    account = daemon.paths.account_dir(ME)
    _cache_with(account / "cache.db", old_key, "old")
    _cache_with(_swap_dir(account) / "cache.db", new_key, "new")
    # Crashed after saving the new credentials, before the swap.
    daemon._finish_swap(_creds(new_key))
    assert not _swap_dir(account).exists()
    assert _marker(account / "cache.db", new_key) == "new"
    # Crashed after removing the old directory, before the rename.
    _cache_with(_swap_dir(account) / "cache.db", new_key, "newer")
    shutil.rmtree(account)
    daemon._finish_swap(_creds(new_key))
    assert _marker(account / "cache.db", new_key) == "newer"
    daemon._finish_swap(_creds(new_key))  # nothing to do
    assert _marker(account / "cache.db", new_key) == "newer"


def test_a_swap_whose_credentials_were_not_saved_is_undone(tmp_path: Path) -> None:
    """The new cache's key never reached the store: the old directory (and
    with it what is to be carried) stays for the next login."""
    daemon = Daemon(short_paths(tmp_path))
    old_key, lost_key = secrets.token_hex(32), secrets.token_hex(32)
    account = daemon.paths.account_dir(ME)
    _cache_with(account / "cache.db", old_key, "old")
    _cache_with(_swap_dir(account) / "cache.db", lost_key, "orphan")
    daemon._finish_swap(_creds(old_key))
    assert not _swap_dir(account).exists()
    assert _marker(account / "cache.db", old_key) == "old"


def test_a_new_cache_that_never_got_a_page_is_not_taken_for_a_finished_one(
    tmp_path: Path,
) -> None:
    """An empty file opens with any key: a crash right after the new cache
    file was created must not replace the old directory with it."""
    daemon = Daemon(short_paths(tmp_path))
    old_key = secrets.token_hex(32)
    account = daemon.paths.account_dir(ME)
    _cache_with(account / "cache.db", old_key, "old")
    for make in (lambda p: None, lambda p: p.touch()):
        _swap_dir(account).mkdir()
        make(_swap_dir(account) / "cache.db")
        daemon._finish_swap(_creds(old_key))
        assert not _swap_dir(account).exists()
        assert _marker(account / "cache.db", old_key) == "old"


def test_a_failing_credentials_store_fails_the_carry_before_anything_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = Daemon(short_paths(tmp_path))
    old_key = secrets.token_hex(32)
    account = daemon.paths.account_dir(ME)
    _cache_with(account / "cache.db", old_key, "old")

    def broken(user_id: str) -> None:
        raise CredentialsError("the keyring is locked")

    monkeypatch.setattr(credentials, "load", broken)
    with pytest.raises(CredentialsError):
        daemon._kept_for(ME)
    assert _marker(account / "cache.db", old_key) == "old"
    # A cache its stored key does not open is given up (the login goes on).
    monkeypatch.setattr(credentials, "load", lambda user_id: _creds(secrets.token_hex(32)))
    assert daemon._kept_for(ME)[1] == []


async def test_a_login_whose_credentials_cannot_be_saved_keeps_what_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The homeserver accepted the login, the old outbox was stashed in a new
    cache beside the old one, then the store failed to save the new key: the
    new cache goes, the old one (and the record holding its key) stays for the
    next login, and the daemon is in the state it was."""
    daemon = Daemon(short_paths(tmp_path))
    daemon.set_state("logged_out", "kept")
    old_key = secrets.token_hex(32)
    account = daemon.paths.account_dir(ME)
    _cache_with_queued(account / "cache.db", old_key, 1)
    monkeypatch.setattr(credentials, "load", lambda user_id: _creds(old_key))
    stashed: list[bool] = []

    def broken(creds: Credentials) -> None:
        stashed.append(_swap_dir(account).exists())
        raise CredentialsError("the keyring is locked")

    monkeypatch.setattr(credentials, "save", broken)

    # Undoing the login asks 127.0.0.1:1 to log the device out: refused, logged.
    with pytest.raises(CredentialsError):
        await daemon._login_with("http://127.0.0.1:1", _accepted)
    assert stashed == [True]
    assert not _swap_dir(account).exists()
    assert (daemon.state, daemon.last_error) == ("logged_out", "kept")
    reopened = Cache.open(account / "cache.db", old_key, ME)
    try:
        assert [i.txn_id for i in reopened.outbox_items()] == ["t1"]
    finally:
        reopened.close()


async def test_a_login_whose_session_cannot_start_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The credentials were saved, then the session did not start (here: the
    cache cannot be opened): the state says why instead of staying at
    ``connecting``; the stored credentials are what the next start resumes."""
    from skiffyd.errors import CacheError

    daemon = Daemon(short_paths(tmp_path))
    saved: list[str] = []
    monkeypatch.setattr(credentials, "load", lambda user_id: None)
    monkeypatch.setattr(credentials, "save", lambda creds: saved.append(creds.device_id))

    async def cannot_start(creds: Credentials) -> None:
        raise CacheError("cannot open the cache file: IOError")

    monkeypatch.setattr(daemon, "_start_session", cannot_start)

    with pytest.raises(CacheError):
        await daemon._login_with("http://127.0.0.1:1", _accepted)
    assert saved == ["NEW"]
    assert daemon.paths.account_pointer.read_text().strip() == ME
    assert (daemon.state, daemon.last_error) == (
        "logged_out",
        "cannot open the cache file: IOError",
    )

    # Nor when the account pointer cannot be written (a full disk).
    def no_space(user_id: str | None) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(daemon, "_write_pointer", no_space)
    daemon.set_state("logged_out")
    with pytest.raises(OSError, match="No space"):
        await daemon._login_with("http://127.0.0.1:1", _accepted)
    assert daemon.state == "logged_out"
    assert "No space left on device" in (daemon.last_error or "")


async def _kept_in_status(daemon: Daemon) -> KeptOutbox | None:
    status = await daemon.handle(Status())
    assert isinstance(status, StatusResult)
    return status.kept_outbox


async def test_status_names_a_kept_outbox_after_a_restart_whoever_is_logged_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept-outbox note is read at start, whether or not the account
    pointer names another account (status is answered from memory)."""
    Daemon(short_paths(tmp_path))._write_kept_note(ME, 3)
    monkeypatch.setattr(credentials, "load", lambda user_id: None)
    for pointer in (None, "@other:x"):
        daemon = Daemon(short_paths(tmp_path))
        daemon._write_pointer(pointer)
        assert await _kept_in_status(daemon) is None  # not read yet
        await daemon._resume()
        assert await _kept_in_status(daemon) == KeptOutbox(user_id=ME, items=3)
    # A note that cannot be read is only a warning: the start goes on.
    note = daemon.paths.kept_outbox_note
    note.unlink()
    note.mkdir()
    await daemon._resume()
    assert await _kept_in_status(daemon) is None


async def test_forget_account_counts_the_kept_outbox_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revoked session's kept outbox is what its next login would carry:
    forgetting the account is refused while it holds something, unless the
    caller discards it; then the cache, the credentials record and the note
    go, and status no longer speaks of them."""
    from ipc_schema import ErrorCode, ForgetAccount
    from skiffyd.errors import SkiffyError

    daemon = Daemon(short_paths(tmp_path))
    key = secrets.token_hex(32)
    account = daemon.paths.account_dir(ME)
    _cache_with_queued(account / "cache.db", key, 2)
    daemon._write_kept_note(ME, 2)
    daemon.set_state("logged_out", "2 unsent outbox items kept")
    assert await _kept_in_status(daemon) == KeptOutbox(user_id=ME, items=2)
    store = {ME: _creds(key)}
    monkeypatch.setattr(credentials, "load", store.get)
    monkeypatch.setattr(credentials, "delete", store.pop)

    with pytest.raises(SkiffyError) as refused:
        await daemon._forget_account(ForgetAccount(user_id=ME))
    assert refused.value.code == ErrorCode.OUTBOX_NOT_EMPTY
    assert refused.value.details == {"items": 2}
    assert (account / "cache.db").exists()
    assert ME in store
    assert daemon.paths.read_kept_outbox() == (ME, 2)

    result = await daemon._forget_account(ForgetAccount(user_id=ME, discard_outbox=True))
    assert (result.found, result.discarded) == (True, 2)
    assert not account.exists()
    assert store == {}
    assert daemon.paths.read_kept_outbox() is None
    assert (daemon.state, daemon.last_error) == ("logged_out", None)
    assert await _kept_in_status(daemon) is None
    again = await daemon._forget_account(ForgetAccount(user_id=ME))
    assert (again.found, again.discarded) == (False, 0)


async def test_forget_account_with_a_failing_store_removes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipc_schema import ForgetAccount

    daemon = Daemon(short_paths(tmp_path))
    account = daemon.paths.account_dir(ME)
    _cache_with(account / "cache.db", secrets.token_hex(32), "kept")

    def broken(user_id: str) -> None:
        raise CredentialsError("the keyring is locked")

    monkeypatch.setattr(credentials, "load", broken)
    with pytest.raises(CredentialsError):
        await daemon._forget_account(ForgetAccount(user_id=ME))
    assert (account / "cache.db").exists()


def test_a_login_that_crashed_before_its_pointer_is_carried_over_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the new credentials were saved, before the account
    pointer was written: no session resumes at the next start (no pointer),
    so the swap is not finished there. The next login finds the stored key
    (the crashed login's) and the new cache beside the old directory: it
    finishes the swap, and what the stash held is carried over again."""
    daemon = Daemon(short_paths(tmp_path))
    old_key, crashed_key = secrets.token_hex(32), secrets.token_hex(32)
    account = daemon.paths.account_dir(ME)
    _cache_with_queued(account / "cache.db", old_key, 2)
    reader = CacheReader.open(account / "cache.db", old_key)
    carried = reader.carry_out()
    reader.close()
    stash = Cache.open(_swap_dir(account) / "cache.db", crashed_key, ME)
    stash.stash_carried(carried)
    stash.close()
    # The crashed login's credentials are the stored ones now.
    monkeypatch.setattr(credentials, "load", lambda user_id: _creds(crashed_key))

    stored, again = daemon._kept_for(ME)
    assert stored is not None
    assert stored.cache_key == crashed_key
    assert [i.txn_id for i, _ in again] == ["t1", "t2"]
    assert not _swap_dir(account).exists()
