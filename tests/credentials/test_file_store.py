"""The encrypted-file credentials store and the config that selects it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from skiffyd import credentials
from skiffyd.config import Paths, Settings
from skiffyd.credentials import Credentials, EncryptedFileStore
from skiffyd.errors import ConfigError, CredentialsError, NoKeyringError

if TYPE_CHECKING:
    from pathlib import Path


def creds(token: str = "syt_secret_token_value") -> Credentials:
    return Credentials(
        homeserver="https://hs.example",
        user_id="@headless:example",
        device_id="DEV",
        access_token=token,
        refresh_token="refresh_secret_value",
        cache_key=Credentials.new_cache_key(),
        pickle_key=Credentials.new_pickle_key(),
    )


@pytest.fixture
def passphrase(tmp_path: Path) -> Path:
    p = tmp_path / "pass"
    p.write_text("correct horse battery staple\n")
    return p


def test_round_trip_rotation_and_delete(tmp_path: Path, passphrase: Path) -> None:
    store = EncryptedFileStore(tmp_path / "data", passphrase)
    assert store.load("@headless:example") is None
    c = creds()
    store.save(c)
    assert store.load("@headless:example") == c
    rotated = creds("syt_rotated")
    store.save(rotated)
    assert store.load("@headless:example") == rotated
    [f] = list((tmp_path / "data").iterdir())
    raw = f.read_bytes()
    for secret in (b"syt_rotated", b"refresh_secret_value", c.cache_key.encode(), b"headless"):
        assert secret not in raw
    assert f.stat().st_mode & 0o777 == 0o600
    store.delete("@headless:example")
    assert store.load("@headless:example") is None


def test_wrong_passphrase_and_tampering_are_clear_errors(tmp_path: Path, passphrase: Path) -> None:
    EncryptedFileStore(tmp_path, passphrase).save(creds())
    other = tmp_path / "other"
    other.write_text("a different passphrase entirely")
    with pytest.raises(CredentialsError, match="passphrase"):
        EncryptedFileStore(tmp_path, other).load("@headless:example")
    [f] = [p for p in tmp_path.iterdir() if p.suffix == ".enc"]
    doc = f.read_text().replace('"ct": "', '"ct": "AAAA', 1)
    f.write_text(doc)
    with pytest.raises(CredentialsError):
        EncryptedFileStore(tmp_path, passphrase).load("@headless:example")


def test_missing_or_short_passphrase_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(NoKeyringError, match="passphrase_file"):
        EncryptedFileStore(tmp_path, None).check()
    with pytest.raises(NoKeyringError, match="cannot read"):
        EncryptedFileStore(tmp_path, tmp_path / "nope").check()
    short = tmp_path / "short"
    short.write_text("tiny")
    with pytest.raises(NoKeyringError, match="shorter"):
        EncryptedFileStore(tmp_path, short).check()


def _paths(tmp_path: Path) -> Paths:
    return Paths(
        config_dir=tmp_path / "config",
        data_dir=tmp_path / "data",
        state_dir=tmp_path / "state",
        runtime_dir=tmp_path / "run",
    )


def test_settings_select_the_store(
    tmp_path: Path, passphrase: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _paths(tmp_path)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert Settings.load(paths) == Settings()
    paths.config_dir.mkdir()
    (paths.config_dir / "config.toml").write_text(
        f'log_level = "debug"\n[credentials]\nbackend = "encrypted-file"\npassphrase_file = "{passphrase}"\n'
    )
    s = Settings.load(paths)
    assert (s.log_level, s.credentials_backend, s.passphrase_file) == (
        "debug",
        "encrypted-file",
        passphrase,
    )
    credentials.configure(
        s.credentials_backend, directory=paths.data_dir, passphrase_file=s.passphrase_file
    )
    try:
        assert credentials.check_backend() == "encrypted-file"
        credentials.save(creds())
        loaded = credentials.load("@headless:example")
        assert loaded is not None
        assert loaded.access_token == "syt_secret_token_value"
    finally:
        credentials.configure("keyring", directory=paths.data_dir, passphrase_file=None)


def test_systemd_credentials_directory_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _paths(tmp_path)
    paths.config_dir.mkdir()
    (paths.config_dir / "config.toml").write_text('[credentials]\nbackend = "encrypted-file"\n')
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    assert Settings.load(paths).passphrase_file == tmp_path / "creds" / "skiffyd-passphrase"


@pytest.mark.parametrize(
    "text",
    ['log_level = "loud"', '[credentials]\nbackend = "plaintext"', "nonsense = 1", "not toml ["],
)
def test_bad_config_is_a_config_error(tmp_path: Path, text: str) -> None:
    paths = _paths(tmp_path)
    paths.config_dir.mkdir()
    (paths.config_dir / "config.toml").write_text(text)
    with pytest.raises(ConfigError):
        Settings.load(paths)
