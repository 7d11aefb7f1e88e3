"""Who is calling: client identities from named API keys or from the peer address, and each client's limits.

* **Named keys.** ``RNNTEXT_API_KEYS="alice:KEY1,bob:KEY2:rate=50"`` or ``RNNTEXT_API_KEYS_FILE`` (one
  ``name:key[:option=value,...]`` per line, ``#`` comments; for a mounted secret). The single ``RNNTEXT_API_KEY``
  is one client named ``default``. A request's key is compared with every configured key in constant time
  (``hmac.compare_digest``, all of them, so the time does not say which name came close).
* **No keys.** A client is its address: the TCP peer, or, when the peer is one of ``RNNTEXT_TRUSTED_PROXIES``
  (CIDRs), the last address in ``X-Forwarded-For`` that is not itself a trusted proxy (the rightmost untrusted
  hop: the one the proxies themselves saw, which a client cannot forge by sending its own header).

Per-key options override the server-wide per-client quotas for that client: ``rate`` (requests per second,
0 = unlimited), ``burst``, ``streams`` and ``sessions``.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from dataclasses import dataclass, replace
from pathlib import Path

NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
OPTIONS = {"rate": float, "burst": int, "streams": int, "sessions": int}


class KeysError(ValueError):
    """A key list the service cannot use (the message names the entry, never the key)."""


@dataclass(frozen=True)
class Limits:
    """One client's quotas: ``rate`` requests per second with bursts of ``burst`` (rate 0: no rate limit),
    ``streams`` concurrent generation streams and ``sessions`` kept sessions, each over the whole server."""

    rate: float
    burst: int
    streams: int
    sessions: int


@dataclass(frozen=True)
class Client:
    name: str  # the key's name, or the address
    keyed: bool  # identified by an API key (False: by address)
    limits: Limits

    @property
    def tag(self) -> str:
        """``k:<name>`` or ``a:<address>``: what owns sessions and counts against quotas (a key's name and an
        address never collide)."""
        return ("k:" if self.keyed else "a:") + self.name

    @property
    def label(self) -> str:
        """The metrics label: the key's name; addresses are not labels (one series per address is unbounded)."""
        return self.name if self.keyed else "anonymous"


def parse_keys(text: str, source: str = "RNNTEXT_API_KEYS") -> dict[str, tuple[str, dict]]:
    """``name:key[:opt=v,...]`` entries (comma- or newline-separated) -> {name: (key, options)}."""
    out: dict[str, tuple[str, dict]] = {}
    seen_keys: set[str] = set()
    entries = [e.strip() for line in text.splitlines() for e in line.split("#", 1)[0].split(",")]
    # options are written after a second colon with commas of their own: glue "opt=v" pieces back on
    merged: list[str] = []
    for e in entries:
        if e and merged and re.fullmatch(r"\w+=\S*", e) and merged[-1].count(":") >= 2:
            merged[-1] += "," + e
        elif e:
            merged.append(e)
    for n, entry in enumerate(merged, 1):
        parts = entry.split(":")
        if len(parts) not in (2, 3):
            raise KeysError(f"{source}: entry {n} is not name:key[:option=value,...]")
        name, key = parts[0].strip(), parts[1].strip()
        if not NAME.fullmatch(name):
            raise KeysError(f"{source}: entry {n}: name {name!r} must be 1-64 of A-Z a-z 0-9 _ . @ -")
        if not key:
            raise KeysError(f"{source}: the key of {name!r} is empty or whitespace only")
        if name in out:
            raise KeysError(f"{source}: {name!r} is named twice")
        if key in seen_keys:
            raise KeysError(f"{source}: {name!r} has the same key as another client")
        seen_keys.add(key)
        options: dict = {}
        for opt in filter(None, (o.strip() for o in (parts[2].split(",") if len(parts) == 3 else []))):
            k, _, v = opt.partition("=")
            if k not in OPTIONS:
                raise KeysError(f"{source}: {name!r}: unknown option {k!r} (known: {', '.join(OPTIONS)})")
            try:
                options[k] = OPTIONS[k](v)
            except ValueError:
                raise KeysError(f"{source}: {name!r}: {k}={v!r} is not a number") from None
            if options[k] < 0 or (k in ("burst", "streams", "sessions") and options[k] < 1):
                raise KeysError(f"{source}: {name!r}: {k} must be positive")
        out[name] = (key, options)
    return out


def parse_proxies(text: str) -> tuple:
    nets = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise KeysError(f"RNNTEXT_TRUSTED_PROXIES: {item!r} is not an address or CIDR") from None
    return tuple(nets)


def load_keys(api_key: str | None, api_keys: str, api_keys_file: str) -> dict[str, tuple[str, dict]]:
    """Every configured key: RNNTEXT_API_KEY (as ``default``), RNNTEXT_API_KEYS and RNNTEXT_API_KEYS_FILE.
    ``api_key`` None means the variable is not set; set but blank is an error, not "no authentication"."""
    text = api_keys
    if api_keys_file:
        try:
            text += "\n" + Path(api_keys_file).read_text()
        except OSError as exc:
            raise KeysError(f"RNNTEXT_API_KEYS_FILE={api_keys_file!r}: {exc.strerror}") from None
    keys = parse_keys(text, "RNNTEXT_API_KEYS" + ("_FILE" if api_keys_file and not api_keys else ""))
    if api_key is not None:
        if not api_key.strip():
            raise KeysError("RNNTEXT_API_KEY is set but empty or whitespace only (unset it to serve without keys)")
        if "default" in keys:
            raise KeysError("RNNTEXT_API_KEY is the client 'default', which RNNTEXT_API_KEYS names as well")
        if any(k == api_key.strip() for k, _ in keys.values()):
            raise KeysError("RNNTEXT_API_KEY has the same key as a client of RNNTEXT_API_KEYS")
        keys = {"default": (api_key.strip(), {}), **keys}
    return keys


class Directory:
    """Turns a request's headers and peer into a ``Client``."""

    def __init__(self, keys: dict[str, tuple[str, dict]], defaults: Limits, trusted_proxies: tuple = ()):
        self.defaults = defaults
        self.trusted = trusted_proxies
        self._keys = [
            (key.encode(), Client(name, True, replace(defaults, **opts))) for name, (key, opts) in keys.items()
        ]
        # the worker's own in-process client (its warm-up): no limits, and a name no key can have (NAME)
        self.internal = Client("(worker)", True, Limits(rate=0, burst=1, streams=1 << 30, sessions=1 << 30))
        self._by_name = {c.name: c for _, c in self._keys} | {self.internal.name: self.internal}
        self._anonymous: dict[str, Client] = {}

    @property
    def keyed(self) -> bool:
        return bool(self._keys)

    def names(self) -> list[str]:
        return [c.name for _, c in self._keys]

    def by_key(self, given: bytes) -> Client | None:
        found = None
        for key, client in self._keys:  # every key, whichever matches: constant time in the key list
            if hmac.compare_digest(given, key):
                found = client
        return found

    def is_trusted(self, address: str) -> bool:
        if not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def address_of(self, peer: str, forwarded_for: bytes | None) -> str:
        """The client's address: the peer, or behind trusted proxies the rightmost untrusted X-Forwarded-For hop."""
        if not forwarded_for or not self.is_trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def lookup(self, tagged: str) -> Client:
        """The client from the gate's ``X-Rnntext-Client`` value (``k:<name>`` or ``a:<address>``)."""
        kind, _, name = tagged.partition(":")
        if kind == "k":
            return self._by_name[name]  # only the gate writes the header, with a name it found here
        return self.by_address(name or "unknown")

    def by_address(self, address: str) -> Client:
        client = self._anonymous.get(address)
        if client is None:
            if len(self._anonymous) > 10000:  # bounded: addresses come from clients
                self._anonymous.clear()
            client = self._anonymous[address] = Client(address, False, self.defaults)
        return client
