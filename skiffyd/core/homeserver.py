"""Homeserver URL rules: HTTPS only, except loopback hosts over plain HTTP."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

from skiffyd.errors import ConfigError, InsecureHomeserverError


def is_loopback_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_homeserver(url: str) -> str:
    """Return ``scheme://host[:port][/path]`` without a trailing slash.

    A bare host name means HTTPS. ``http://`` is refused unless the host is
    a loopback address (127.0.0.0/8, ::1, localhost).
    """
    text = url.strip()
    if not text:
        raise ConfigError("the homeserver URL is empty")
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"not a homeserver URL: {url!r} (expected https://host[:port])")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError("a homeserver URL carries no credentials, query or fragment")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise InsecureHomeserverError(
            f"refusing plain http:// to {parts.hostname}: use https:// "
            "(plain HTTP is allowed only for loopback addresses)"
        )
    return urlunsplit((parts.scheme, parts.netloc.lower(), parts.path.rstrip("/"), "", ""))
