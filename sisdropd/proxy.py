"""Which proxy a Canvas request goes through: ``[canvas] proxy``, else the environment's.

``proxy_for(url, configured)`` is the one decision, made explicitly (the HTTP session keeps
requests' ``trust_env`` off, so ``.netrc`` is never read and ``REQUESTS_CA_BUNDLE`` or
``CURL_CA_BUNDLE`` never override ``[canvas] ca_bundle``): ``[canvas] proxy`` for every
URL, loopback included; else loopback hosts directly (a shell's proxy never breaks the
simulator, ``sisdropd demo`` or the tests); else ``$HTTPS_PROXY`` / ``$HTTP_PROXY`` (any
case) unless ``$NO_PROXY`` excludes the host. ``sisdropd check`` prints the choice with
``config.mask_url`` hiding a proxy password.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from sisdropd.config import is_loopback


def _env(environ: Mapping[str, str], name: str) -> str:
    """``$name`` in any case (lower case first, as curl reads it, then upper, then any)."""
    for key in (name.lower(), name.upper()):
        if environ.get(key, "").strip():
            return environ[key].strip()
    for key, value in environ.items():
        if key.lower() == name.lower() and value.strip():
            return value.strip()
    return ""


def no_proxy_matches(host: str, port: int | None, no_proxy: str) -> str | None:
    """The ``NO_PROXY`` entry that excludes ``host`` (and ``port``), or None.

    Entries are comma-separated: ``*`` (everything), a domain (``example.edu`` and
    ``.example.edu`` both match the domain and every name under it, ``*.example.edu``
    too), ``host:port``, an IP address or a CIDR network (``10.0.0.0/8``).
    """
    host = host.lower().strip("[]")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return raw.strip()
        try:
            net = ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            net = None
        if net is not None:
            try:
                if ipaddress.ip_address(host) in net:
                    return raw.strip()
            except ValueError:
                pass
            continue
        name, sep, want = entry.rpartition(":")
        if sep and want.isdigit() and "]" not in want:
            if port != int(want):
                continue
            entry = name
        entry = entry.strip("[]").lstrip("*").lstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return raw.strip()
    return None


def proxy_for(url: str, configured: str | None, environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """The proxy a request to ``url`` goes through (None: direct), and why, in words.

    ``[canvas] proxy`` (``configured``), when set, is used for every URL, loopback
    included. Otherwise a loopback host is reached directly (a shell's proxy never breaks
    the simulator or the tests); any other host goes through ``$HTTPS_PROXY`` (or
    ``$HTTP_PROXY`` for http) unless ``$NO_PROXY`` excludes it. Nothing else of the
    environment is read: no ``.netrc``, no ``REQUESTS_CA_BUNDLE`` (the session keeps
    ``trust_env`` off).
    """
    if configured:
        return configured, "[canvas] proxy"
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    host = parts.hostname or ""
    if is_loopback(host):
        return None, f"direct: {host} is this host"
    name = f"{parts.scheme}_proxy"
    proxy = _env(env, name)
    if not proxy:
        return None, f"direct: no ${name.upper()} set"
    excluded = no_proxy_matches(host, parts.port or (443 if parts.scheme == "https" else 80), _env(env, "no_proxy"))
    if excluded is not None:
        return None, f"direct: $NO_PROXY excludes {host} ({excluded})"
    return proxy, f"${name.upper()}"
