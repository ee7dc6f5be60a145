"""Where the gateway may POST: the rule against server-side request forgery (SSRF). Pure.

A tenant chooses the URLs the gateway calls (a job's ``callback_url``, its own ``inbound_url``),
so without a rule a tenant could make the gateway POST to its own API, to a carrier's SMPP
port, to the cloud's metadata service (169.254.169.254) or to anything on the private network
behind it. The rule is applied twice:

1. **At submission** (``url_problem``): the URL's text. Control characters, whitespace,
   backslashes, non-ASCII text, credentials (``user:pass@``), a missing host and a host that is
   neither a host name nor an IP address are refused; an IP address in *any* spelling the
   resolvers of the world accept (``127.1``, ``0x7f000001``, ``2130706433``, ``0177.0.0.1``,
   ``[::ffff:127.0.0.1]``, ``[::1]``) is decoded and checked; local names (``localhost``,
   ``*.localhost``, ``*.local``, ``*.internal``, one-label names) are refused unless the operator
   opened private networks (they would resolve to one).
2. **At connect time** (``gateway/runtime/guarded_http.py``): the host is resolved once, every
   address it resolves to is checked with ``address_problem``, and the connection is opened to
   a checked address, never by name again: a name that resolves to a public address when
   submitted and to 127.0.0.1 when called (DNS rebinding) is refused then.

An address is allowed when it is globally routable (not loopback, private, CGNAT, link-local,
multicast, reserved, documentation, benchmarking, unspecified: the IANA special-purpose
registries, RFC 6890), IPv6 addresses that embed an IPv4 one (``::ffff:a.b.c.d``, NAT64
``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by it. The operator's allow-list
(``webhooks.allow_private``: CIDRs) opens non-global networks for tests and private
deployments. The gateway's own endpoints (its API, its carriers' SMPP and HTTP ports) are
refused whatever the allow-list says.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["Address", "TargetPolicy", "address_problem", "parse_host", "url_problem"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4_BLOCKED = [ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
)]  # fmt: skip
_V6_BLOCKED = [ipaddress.IPv6Network(n) for n in (
    "::/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16",
    "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
)]  # fmt: skip
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V6_UNICAST = ipaddress.IPv6Network("2000::/3")
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa", ".lan", ".intranet")
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_V4_PART = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f\\]|[^\x00-\x7f]")


class TargetPolicy:
    """The operator's allow-list and the gateway's own endpoints (host, port) that are never a
    target. ``add_own`` adds an endpoint known only once bound (``serve --port 0``)."""

    def __init__(self, allow_private: Iterable[str] = (), own: Iterable[tuple[str, int]] = ()) -> None:
        self.allowed = [ipaddress.ip_network(cidr, strict=False) for cidr in allow_private]
        self.own: set[tuple[str, int]] = set()
        for host, port in own:
            self.add_own(host, port)

    def add_own(self, host: str, port: int) -> None:
        self.own.add((host.strip("[]").rstrip(".").lower(), port))

    def is_allowed(self, ip: Address) -> bool:
        return any(ip.version == n.version and ip in n for n in self.allowed)

    def is_own(self, host: str, ip: Address | None, port: int) -> bool:
        """Is (host or ip, port) one of the gateway's own endpoints? A wildcard bind (0.0.0.0,
        ::) is every local address: then any non-global address on that port is ours."""
        if ip is None and (host in _LOCAL_NAMES or host.endswith(".localhost")):
            ip = _LOOPBACK  # what a local name resolves to: our own loopback
        for own_host, own_port in self.own:
            if own_port != port:
                continue
            if own_host == host:
                return True
            own_ip = parse_host(own_host)
            if isinstance(own_ip, str):
                if own_host in _LOCAL_NAMES and ip is not None and _blocked(ip):
                    return True
                continue
            if ip is not None and (own_ip == ip or (own_ip.is_unspecified and _blocked(ip))):
                return True
            if ip is not None and own_ip.is_loopback and ip.is_loopback:
                return True
        return False


def address_problem(ip: Address, port: int, policy: TargetPolicy, host: str = "") -> str | None:
    """Why the gateway must not connect to ``ip``:``port`` (None: it may)."""
    if policy.is_own(host, ip, port):
        return f"{_show(ip)}:{port} is one of the gateway's own endpoints"
    if _blocked(ip) and not policy.is_allowed(ip):
        return f"{_show(ip)} is not a public address (loopback, private, link-local, multicast or reserved)"
    return None


def url_problem(url: str, policy: TargetPolicy) -> str | None:
    """Why ``url`` may not be a target (None: it may, as far as its text tells)."""
    if _BAD_CHARS.search(url):
        return "the URL has a control character, a space, a backslash or non-ASCII text (percent-encode it)"
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return "the URL cannot be parsed"
    if parts.scheme.lower() not in ("http", "https") or not url[len(parts.scheme) :].startswith("://"):
        return "the URL must start with http:// or https://"
    netloc = parts.netloc
    if "@" in netloc:
        return "the URL may not carry credentials (user:password@); the webhook signature authenticates us"
    host, port = _split_netloc(netloc, 443 if parts.scheme.lower() == "https" else 80)
    if port is None:
        return "the URL's port is not a number in 1..65535"
    if not host:
        return "the URL has no host"
    target = parse_host(host)
    if target is None:
        return f"the URL's host {host!r} is neither a host name nor an IP address"
    if isinstance(target, str):  # a name: its addresses are checked when we connect
        if policy.is_own(target, None, port):
            return f"{target}:{port} is one of the gateway's own endpoints"
        if _is_local_name(target) and not policy.allowed:
            return f"{target!r} is a local name (only public hosts, unless webhooks.allow_private is set)"
        return None
    return address_problem(target, port, policy, target.compressed)


def parse_host(host: str) -> Address | str | None:
    """A URL's host as an address (every spelling of one), or as a lower-case name without its
    trailing dot, or None if it is neither."""
    if host.startswith("[") or ":" in host:
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if "%" in inner:  # a zone id ("fe80::1%eth0") names an interface of ours
            return None
        try:
            return ipaddress.IPv6Address(inner)  # no zone ids ("%eth0"): refused
        except ValueError:
            return None
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    if _V4_PART.match(labels[-1]):  # WHATWG URL: a numeric last label makes it an IPv4 address
        return _inet_aton(labels)
    if not all(_LABEL.match(label) for label in labels):
        return None
    return name


def _inet_aton(parts: list[str]) -> ipaddress.IPv4Address | None:
    """IPv4 as inet_aton(3) and WHATWG read it: 1-4 parts, each decimal, 0x-hex or 0-octal, the
    last one filling the bytes left (``127.1`` = 127.0.0.1, ``2130706433`` = 127.0.0.1)."""
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for p in parts:
        if not _V4_PART.match(p):
            return None
        try:
            if p.startswith("0x"):
                values.append(int(p[2:] or "0", 16))
            elif len(p) > 1 and p.startswith("0"):
                values.append(int(p, 8))
            else:
                values.append(int(p))
        except ValueError:  # "08": not octal
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for k, v in enumerate(head):
        number += v << (8 * (3 - k))
    return ipaddress.IPv4Address(number)


def _blocked(ip: Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _blocked(embedded)
        if ip not in _V6_UNICAST:  # all that IANA has allocated for global unicast
            return True
        return any(ip in n for n in _V6_BLOCKED) or _special(ip) or ip.is_site_local
    return any(ip in n for n in _V4_BLOCKED) or _special(ip)


def _special(ip: Address) -> bool:
    """Python's own classification too (it follows the IANA registries of its release)."""
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved \
        or ip.is_unspecified


def _is_local_name(name: str) -> bool:
    return name in _LOCAL_NAMES or "." not in name or name.endswith(_LOCAL_SUFFIXES)


def _split_netloc(netloc: str, default: int) -> tuple[str, int | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = (netloc, "") if end < 0 else (netloc[: end + 1], netloc[end + 1 :])
    else:
        host, _, port_text = netloc.partition(":")
        rest = f":{port_text}" if _ else ""
    if not rest:
        return host, default
    if not rest.startswith(":"):
        return host, None
    text = rest[1:]
    if text == "":
        return host, default
    if not text.isdigit() or not 1 <= int(text) <= 65535 or not text.isascii():
        return host, None
    return host, int(text)


def _show(ip: Address) -> str:
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
