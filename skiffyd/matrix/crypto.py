"""nio's Olm/Megolm machine (vodozemac), used sans-I/O.

The crypto store is nio's SqliteStore under the account's data dir, pickled
with a key from the keyring, never ``DEFAULT_KEY``: with ``store_path=""`` nio
silently turns encryption off, so :meth:`Crypto.load` checks ``olm`` is set.
This step loads the machine and publishes the device's keys; decrypting and
encrypting rooms is built on it later.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import nio
from nio.store import SqliteStore

from skiffyd.errors import DaemonError

if TYPE_CHECKING:
    from pathlib import Path

    from skiffyd.matrix.transport import Transport


class Crypto:
    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def load(
        cls, store_dir: Path, *, user_id: str, device_id: str, access_token: str, pickle_key: str
    ) -> Crypto:
        """Blocking (SQLite): run on a worker thread."""
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
    def should_upload_keys(self) -> bool:
        return bool(self._client.should_upload_keys)

    @property
    def fingerprint(self) -> str:
        return str(self._client.olm.account.identity_keys["ed25519"])

    async def upload_keys(self, transport: Transport) -> None:
        keys = self._client.olm.share_keys()
        data = await transport.request("POST", "/_matrix/client/v3/keys/upload", json=keys)
        self._client.receive_response(nio.KeysUploadResponse.from_dict(json.loads(data)))

    def close(self) -> None:
        store = getattr(self._client, "store", None)
        database = getattr(store, "database", None)
        if database is not None:
            database.close()
