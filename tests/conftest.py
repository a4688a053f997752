"""Shared fixtures.

Integration fixtures (all real programs, see ``skiffyd.devenv``):

* ``synapse`` — one Synapse on 127.0.0.1 for the whole session. If it cannot
  start the tests that use it fail loudly; nothing is skipped.
* ``secret_service`` — gnome-keyring in a private D-Bus session, one per
  session.
* ``make_user()`` — registers a fresh account (unique localpart, random
  password) on ``synapse``.
* ``make_peer(account=None, encrypted=False)`` — a logged-in matrix-nio peer
  (a fresh account unless one is given; with ``encrypted`` nio's own Olm
  machine and crypto store); closed after the test.
* ``make_instance(start=True)`` — a ``skiffyd run`` with its own XDG dirs
  under a short temp dir and the secret service's environment, started and
  answering ``skiffyd status --json`` (or not started, with ``start=False``);
  stopped after the test. Its ``cli(*args, input=None)`` runs the ``skiffyd``
  console script with the same environment.
* ``daemon`` — one started instance, logged out.
* ``ready`` — a ``Ready``: a daemon logged in as a fresh account and
  ``ready``, with a peer on the same server.

Integration tests are marked ``@pytest.mark.integration`` (``-m "not
integration"`` runs the rest). Test accounts' passwords never appear in
reprs or in assertion messages.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from skiffyd.devenv.instance import SkiffyInstance
from skiffyd.devenv.peer import Peer
from skiffyd.devenv.secret_service import SecretService
from skiffyd.devenv.synapse import Account, Synapse

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_unique = count(1)
#: Start-up times of the session's real programs, shown in the summary.
_TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TIMINGS:
        times = ", ".join(f"{name} ready in {secs:.2f} s" for name, secs in _TIMINGS.items())
        terminalreporter.write_line(f"harness: {times}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator:
    # Remember each phase's report so fixtures can tell whether the test failed.
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


def short_tmp(prefix: str) -> Path:
    """A temp dir short enough for unix socket paths (≤ 107 bytes)."""
    base = tempfile.gettempdir()
    if len(base) > 40:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


# --------------------------------------------------------------- session-wide


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    hs = Synapse(tmp_path_factory.mktemp("synapse"))
    _TIMINGS["Synapse"] = hs.start()
    yield hs
    hs.stop()


@pytest.fixture(scope="session")
def secret_service() -> Iterator[SecretService]:
    with SecretService() as ss:
        _TIMINGS["Secret Service"] = ss.start_seconds or 0.0
        yield ss


# ---------------------------------------------------------------- per test


def new_account(hs: Synapse, prefix: str = "user") -> Account:
    localpart = f"{prefix}-{next(_unique)}-{secrets.token_hex(3)}"
    return hs.register_account(localpart, secrets.token_urlsafe(18))


@pytest.fixture
def make_user(synapse: Synapse) -> Callable[..., Account]:
    def make(prefix: str = "user") -> Account:
        return new_account(synapse, prefix)

    return make


@pytest.fixture
def make_peer(synapse: Synapse) -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def make(
        account: Account | None = None, hs: Synapse | None = None, *, encrypted: bool = False
    ) -> Peer:
        server = hs or synapse
        acct = account or new_account(server, "peer")
        store = str(short_tmp("peer-")) if encrypted else None
        peer = Peer.logged_in(server.base_url, acct.user_id, acct.password, store_dir=store)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()
        if peer.store_dir is not None:
            shutil.rmtree(peer.store_dir, ignore_errors=True)


@pytest.fixture
def make_instance(
    request: pytest.FixtureRequest, secret_service: SecretService
) -> Iterator[Callable[..., SkiffyInstance]]:
    instances: list[SkiffyInstance] = []

    def make(start: bool = True) -> SkiffyInstance:
        inst = SkiffyInstance(short_tmp("sk-"), env=secret_service.env())
        instances.append(inst)
        if start:
            inst.start()
        return inst

    yield make
    for inst in instances:
        inst.terminate()
    # The session's keyring is shared: leave it as this test found it.
    if instances:
        secret_service.delete_items({"service": "skiffy"})
    if _failed(request):
        for inst in instances:
            print(f"\n--- daemon log {inst.log_path} (last lines)\n{inst.log_tail(60)}")
    else:
        for inst in instances:
            shutil.rmtree(inst.root, ignore_errors=True)


@pytest.fixture
def daemon(make_instance: Callable[..., SkiffyInstance]) -> SkiffyInstance:
    return make_instance()


@dataclass
class Ready:
    """A logged-in daemon, its account, the server, and a peer there."""

    daemon: SkiffyInstance
    account: Account
    synapse: Synapse
    peer: Peer

    def shared_room(self, name: str = "Test room", topic: str | None = "a topic") -> str:
        """A room the peer created and the daemon's account joined (via the CLI)."""
        room_id = self.peer.create_room(name, topic, invite=[self.account.user_id])
        self.daemon.join_invited(room_id)
        return room_id


@pytest.fixture
def ready(
    daemon: SkiffyInstance,
    synapse: Synapse,
    make_user: Callable[..., Account],
    make_peer: Callable[..., Peer],
) -> Ready:
    account = make_user("skiffy")
    daemon.login_ready(synapse.base_url, account.user_id, account.password)
    return Ready(daemon=daemon, account=account, synapse=synapse, peer=make_peer())


@pytest.fixture
def own_synapse(tmp_path: Path) -> Iterator[Synapse]:
    """A Synapse for this test alone: for tests that stop and restart it."""
    hs = Synapse(tmp_path / "synapse")
    hs.start()
    yield hs
    hs.stop()
