"""The SSRF guard's decisions: may Conduit open a connection to this host?

Pure policy: a host name and a resolver in, the addresses it may connect to (or the reason
it may not) out. :mod:`conduit.upstream.network` calls it for every outbound connection and
then connects to exactly the addresses it returned, so a DNS answer that changes between the
check and the connection cannot steer the connection anywhere else.

Every address a name resolves to must pass: a name with one public and one private address
is refused. IPv4 written in legacy forms (decimal, octal, hex, short) is read as the address
it denotes, and IPv4 embedded in IPv6 (mapped, compatible, NAT64, 6to4) is judged as that
IPv4 address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import anyio

from conduit.errors import BlockedAddressError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> addresses``; :func:`system_resolver` in production, a table in tests."""

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# (network, what it is, the policy class that can allow it)
_NEVER: Final = "never"  # no configuration makes these reachable
_PRIVATE: Final = "private"  # allowed by allowPrivateNetworks
_SPECIAL: Final = "special"  # allowed only by listing them in allowedNetworks

_IPV4_RANGES: Final[tuple[tuple[ipaddress.IPv4Network, str, str], ...]] = (
    (_V4("0.0.0.0/8"), "unspecified ('this network')", _NEVER),
    (_V4("127.0.0.0/8"), "loopback", _PRIVATE),
    (_V4("10.0.0.0/8"), "private", _PRIVATE),
    (_V4("172.16.0.0/12"), "private", _PRIVATE),
    (_V4("192.168.0.0/16"), "private", _PRIVATE),
    (_V4("100.64.0.0/10"), "carrier-grade NAT", _PRIVATE),
    (_V4("169.254.0.0/16"), "link-local (cloud metadata lives here)", _SPECIAL),
    (_V4("192.0.0.0/24"), "IETF protocol assignments", _SPECIAL),
    (_V4("192.0.2.0/24"), "documentation", _SPECIAL),
    (_V4("198.51.100.0/24"), "documentation", _SPECIAL),
    (_V4("203.0.113.0/24"), "documentation", _SPECIAL),
    (_V4("192.88.99.0/24"), "6to4 relay anycast", _SPECIAL),
    (_V4("198.18.0.0/15"), "benchmarking", _SPECIAL),
    (_V4("224.0.0.0/4"), "multicast", _NEVER),
    (_V4("240.0.0.0/4"), "reserved", _NEVER),
)
_IPV6_RANGES: Final[tuple[tuple[ipaddress.IPv6Network, str, str], ...]] = (
    (_V6("::/128"), "unspecified", _NEVER),
    (_V6("::1/128"), "loopback", _PRIVATE),
    (_V6("fc00::/7"), "unique local (private)", _PRIVATE),
    (_V6("fe80::/10"), "link-local", _SPECIAL),
    (_V6("fec0::/10"), "site-local (deprecated)", _SPECIAL),
    (_V6("ff00::/8"), "multicast", _NEVER),
    (_V6("100::/64"), "discard-only", _NEVER),
    (_V6("2001:db8::/32"), "documentation", _SPECIAL),
    (_V6("2001::/32"), "Teredo (hides an IPv4 address)", _SPECIAL),
    (_V6("64:ff9b:1::/48"), "local-use NAT64", _SPECIAL),
)
_MAPPED: Final = _V6("::ffff:0:0/96")
_COMPATIBLE: Final = _V6("::/96")
_NAT64: Final = _V6("64:ff9b::/96")
_SIX_TO_FOUR: Final = _V6("2002::/16")


@dataclass(frozen=True)
class NetworkPolicy:
    """What outbound connections may reach besides the public internet."""

    allow_private_networks: bool = False
    """Loopback, RFC 1918, unique-local and CGNAT addresses become reachable (local development)."""
    allowed_hosts: frozenset[str] = frozenset()
    """Host names (``api.internal``, ``*.corp.example``) whose addresses are reachable whatever they are,
    except the never-reachable ones (unspecified, multicast, reserved)."""
    allowed_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)
    """CIDRs reachable whatever they are (e.g. ``169.254.169.254/32`` if you really mean it)."""

    @classmethod
    def build(cls, allow_private: bool, hosts: Iterable[str], networks: Iterable[str]) -> NetworkPolicy:
        """A policy from config values.

        Raises:
            ValueError: a network is not a valid CIDR.
        """
        return cls(
            allow_private_networks=allow_private,
            allowed_hosts=frozenset(normalise_host(host) for host in hosts),
            allowed_networks=tuple(ipaddress.ip_network(net, strict=False) for net in networks),
        )

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` (normalised) is listed, directly or under a ``*.`` wildcard.

        >>> NetworkPolicy.build(False, ["*.corp.example", "db.local"], []).host_allowed("api.corp.example")
        True
        >>> NetworkPolicy.build(False, ["*.corp.example"], []).host_allowed("corp.example.evil.test")
        False
        """
        if host in self.allowed_hosts:
            return True
        return any(pattern.startswith("*.") and host.endswith(pattern[1:]) for pattern in self.allowed_hosts)


def normalise_host(host: str) -> str:
    """Lower case, no IPv6 brackets, no single trailing dot.

    >>> normalise_host("[::1]"), normalise_host("Example.COM.")
    ('::1', 'example.com')
    """
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host[:-1] if host.endswith(".") and not host.endswith("..") else host


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` denotes if it is an IP literal, legacy IPv4 forms included.

    >>> [str(ip_literal(h)) for h in ("2130706433", "0177.0.0.1", "0x7f.1", "127.1", "::ffff:7f00:1")]
    ['127.0.0.1', '127.0.0.1', '127.0.0.1', '127.0.0.1', '::ffff:7f00:1']
    >>> ip_literal("example.com") is None
    True
    """
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if not host or any(c not in "0123456789abcdefx." for c in host) or not host[0].isdigit():
        return None
    try:  # inet_aton reads what C resolvers read: 127.1, 0x7f.0.0.1, 017700000001, 2130706433
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), and how.

    >>> embedded_ipv4(ipaddress.IPv6Address("64:ff9b::a9fe:a9fe"))
    (IPv4Address('169.254.169.254'), 'NAT64')
    >>> embedded_ipv4(ipaddress.IPv6Address("2002:7f00:1::"))
    (IPv4Address('127.0.0.1'), '6to4')
    """
    value = int(address)
    if address in _MAPPED:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF), "IPv4-mapped"
    if address in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF), "NAT64"
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF), "6to4"
    if address in _COMPATIBLE and value > 1:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF), "IPv4-compatible"
    return None


def classify(address: IPAddress) -> tuple[str, str] | None:
    """``(what, class)`` for a non-public address (class: never, private or special), None if public.

    >>> classify(ipaddress.ip_address("::ffff:10.0.0.1"))
    ('private (IPv4-mapped)', 'private')
    >>> classify(ipaddress.ip_address("8.8.8.8")) is None
    True
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded is not None:
            inner = classify(embedded[0])
            return (f"{inner[0]} ({embedded[1]})", inner[1]) if inner else None
        ranges: Iterable[tuple[IPNetwork, str, str]] = _IPV6_RANGES
    else:
        if address == ipaddress.IPv4Address("255.255.255.255"):
            return "broadcast", _NEVER
        ranges = _IPV4_RANGES
    for network, what, kind in ranges:
        if address in network:
            return what, kind
    if not address.is_global:
        return "not globally routable", _SPECIAL
    return None


def check_address(address: IPAddress, policy: NetworkPolicy, host_listed: bool = False) -> str | None:
    """Why ``address`` may not be reached under ``policy``, or None when it may."""
    found = classify(address)
    if found is None:
        return None
    what, kind = found
    if kind == _NEVER:
        return what
    if any(address in network for network in policy.allowed_networks if network.version == address.version):
        return None
    if host_listed or (kind == _PRIVATE and policy.allow_private_networks):
        return None
    return what


async def checked_addresses(host: str, port: int, policy: NetworkPolicy, resolve: Resolver) -> list[str]:
    """The addresses a connection to ``host`` may use: every one it resolves to, all checked.

    Raises:
        BlockedAddressError: the host is malformed, does not resolve, or any address is refused.
    """
    name = normalise_host(host)
    if not name or any(c.isspace() for c in name) or "@" in name:
        raise BlockedAddressError(f"refusing malformed host {host!r}")
    listed = policy.host_allowed(name)
    literal = ip_literal(name)
    if literal is not None:
        candidates: list[IPAddress] = [literal]
    else:
        try:
            answers = await resolve(name, port)
        except OSError as exc:
            raise BlockedAddressError(f"cannot resolve {name!r}: {exc}") from None
        candidates = []
        for answer in answers:
            parsed = ip_literal(answer)
            if parsed is None:
                raise BlockedAddressError(f"{name!r} resolved to something that is not an address: {answer!r}")
            if parsed not in candidates:
                candidates.append(parsed)
        if not candidates:
            raise BlockedAddressError(f"{name!r} does not resolve to any address")
    for candidate in candidates:
        reason = check_address(candidate, policy, listed)
        if reason is not None:
            shown = name if literal is None else host
            raise BlockedAddressError(
                f"refusing to connect to {shown!r}: {candidate} is {reason} "
                "(allow it with network.allowPrivateNetworks, allowedHosts or allowedNetworks)"
            )
    return [str(candidate) for candidate in candidates]


async def system_resolver(host: str, port: int) -> list[str]:
    """The system's answer for ``host``: every address, in its order, once."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen
