"""The SSRF guard: the decision table (no network), then real connections through the guarded client."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import httpcore2
import httpx2
import pytest

from conduit.errors import BlockedAddressError
from conduit.security.ssrf import NetworkPolicy, checked_addresses
from conduit.upstream.network import GuardedBackend, guarded_client

pytestmark = pytest.mark.anyio

PUBLIC = "93.184.216.34"
DEFAULT = NetworkPolicy()


def table(answers: dict[str, list[str]]) -> Any:
    """A resolver answering from ``answers`` and recording each question."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in answers:
            raise OSError(f"no such host {host}")
        return answers[host]

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


NO_DNS = table({})

BLOCKED_LITERALS = [
    ("127.0.0.1", "loopback"),
    ("2130706433", "loopback"),  # decimal
    ("0177.0.0.1", "loopback"),  # octal
    ("0x7f.0.0.1", "loopback"),  # hex
    ("0x7f000001", "loopback"),
    ("127.1", "loopback"),  # short form
    ("0.0.0.0", "unspecified"),
    ("0", "unspecified"),
    ("::", "unspecified"),
    ("[::]", "unspecified"),
    ("::1", "loopback"),
    ("[::1]", "loopback"),
    ("::ffff:127.0.0.1", "loopback (IPv4-mapped)"),
    ("::ffff:7f00:1", "loopback (IPv4-mapped)"),
    ("::127.0.0.1", "loopback (IPv4-compatible)"),
    ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata lives here) (NAT64)"),
    ("64:ff9b::7f00:1", "loopback (NAT64)"),
    ("2002:7f00:1::", "loopback (6to4)"),
    ("2002:a9fe:a9fe::1", "link-local (cloud metadata lives here) (6to4)"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.0.1", "private"),
    ("fd12:3456::1", "unique local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "documentation"),
    ("2001:db8::1", "documentation"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
]


@pytest.mark.parametrize(("host", "reason"), BLOCKED_LITERALS)
async def test_non_public_literals_are_refused_without_dns(host: str, reason: str) -> None:
    with pytest.raises(BlockedAddressError) as caught:
        await checked_addresses(host, 80, DEFAULT, NO_DNS)
    assert reason in caught.value.message
    assert NO_DNS.asked == []


@pytest.mark.parametrize("host", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111", "172.32.0.1", "100.128.0.1"])
async def test_public_literals_pass(host: str) -> None:
    assert await checked_addresses(host, 443, DEFAULT, NO_DNS) == [str(ipaddress.ip_address(host))]


async def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    resolve = table(
        {
            "public.test": [PUBLIC, "2606:4700:4700::1111"],
            "localhost": ["127.0.0.1", "::1"],
            "mixed.test": [PUBLIC, "10.0.0.7"],
            "mapped.test": ["::ffff:169.254.169.254"],
            "empty.test": [],
        }
    )
    assert await checked_addresses("public.test", 443, DEFAULT, resolve) == [PUBLIC, "2606:4700:4700::1111"]
    assert await checked_addresses("Public.Test.", 443, DEFAULT, resolve) == [PUBLIC, "2606:4700:4700::1111"]
    for host, reason in [
        ("localhost", "loopback"),
        ("localhost.", "loopback"),
        ("mixed.test", "10.0.0.7 is private"),  # one private answer is enough to refuse
        ("mapped.test", "IPv4-mapped"),
        ("empty.test", "does not resolve"),
        ("nowhere.test", "cannot resolve"),
    ]:
        with pytest.raises(BlockedAddressError, match=reason):
            await checked_addresses(host, 443, DEFAULT, resolve)


@pytest.mark.parametrize("host", ["evil.test@127.0.0.1", "a b", "", "127.0.0.1 extra"])
async def test_malformed_hosts_are_refused(host: str) -> None:
    with pytest.raises(BlockedAddressError):
        await checked_addresses(host, 80, DEFAULT, NO_DNS)


async def test_allow_private_networks_opens_private_ranges_only() -> None:
    policy = NetworkPolicy(allow_private_networks=True)
    for host in ("127.0.0.1", "::1", "10.0.0.1", "192.168.1.1", "fd00::1", "100.64.0.1", "::ffff:127.0.0.1"):
        assert await checked_addresses(host, 80, policy, NO_DNS)
    for host in ("169.254.169.254", "0.0.0.0", "224.0.0.1", "fe80::1", "::"):
        with pytest.raises(BlockedAddressError):
            await checked_addresses(host, 80, policy, NO_DNS)


async def test_allowed_networks_and_hosts_are_explicit_exceptions() -> None:
    policy = NetworkPolicy.build(False, ["*.internal", "exact.test"], ["169.254.169.254/32", "10.9.0.0/16"])
    resolve = table({"db.internal": ["10.0.0.5"], "exact.test": ["127.0.0.1"], "other.test": ["10.0.0.5"]})
    assert await checked_addresses("169.254.169.254", 80, policy, resolve) == ["169.254.169.254"]
    assert await checked_addresses("10.9.1.1", 80, policy, resolve) == ["10.9.1.1"]
    assert await checked_addresses("db.internal", 80, policy, resolve) == ["10.0.0.5"]
    assert await checked_addresses("exact.test", 80, policy, resolve) == ["127.0.0.1"]
    for host in ("169.254.169.253", "other.test", "internal"):
        with pytest.raises(BlockedAddressError):
            await checked_addresses(host, 80, policy, resolve)
    never = NetworkPolicy.build(True, ["*.internal"], ["0.0.0.0/0"])
    with pytest.raises(BlockedAddressError, match="unspecified"):
        await checked_addresses("0.0.0.0", 80, never, resolve)


@dataclass
class RecordingBackend(httpcore2.AsyncNetworkBackend):
    """Records where connections were asked to go, and connects nowhere."""

    targets: list[str] = field(default_factory=list)

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        self.targets.append(host)
        raise httpcore2.ConnectError("recorded")


async def test_a_dns_answer_that_flips_after_the_check_never_reaches_the_private_address() -> None:
    answers = iter([[PUBLIC], ["127.0.0.1"], ["127.0.0.1"]])
    calls = 0

    async def flipping(host: str, port: int) -> list[str]:
        nonlocal calls
        calls += 1
        return next(answers)

    inner = RecordingBackend()
    backend = GuardedBackend(DEFAULT, flipping, inner)
    with pytest.raises(httpcore2.ConnectError, match="recorded"):
        await backend.connect_tcp("rebind.test", 443)
    assert (calls, inner.targets) == (1, [PUBLIC])  # resolved once; connected to the checked address
    with pytest.raises(httpcore2.ConnectError, match="127.0.0.1 is loopback"):
        await backend.connect_tcp("rebind.test", 443)  # the next connection is checked afresh
    assert inner.targets == [PUBLIC]


@dataclass
class Listener:
    """A loopback HTTP server that counts connections and answers every request with ``response``."""

    port: int
    response: bytes
    connections: int = 0


@pytest.fixture
async def listeners(anyio_backend: str) -> AsyncIterator[Any]:
    async with anyio.create_task_group() as tg:

        async def start(response: bytes) -> Listener:
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            state = Listener(port, response)

            async def handle(stream: anyio.abc.SocketStream) -> None:
                state.connections += 1
                async with stream:
                    await stream.receive()
                    await stream.send(response)

            tg.start_soon(listener.serve, handle)
            return state

        yield start
        tg.cancel_scope.cancel()


def ok(body: bytes = b"ok") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)


def redirect(location: str) -> bytes:
    return f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()


async def test_a_loopback_listener_is_unreachable_by_default_and_reachable_when_allowed(listeners: Any) -> None:
    target = await listeners(ok())
    for url in (
        f"http://127.0.0.1:{target.port}/",
        f"http://localhost:{target.port}/",
        f"http://user@127.0.0.1:{target.port}/",
        f"http://evil.test@127.0.0.1:{target.port}/",
        f"http://[::ffff:127.0.0.1]:{target.port}/",
        f"http://2130706433:{target.port}/",
    ):
        async with guarded_client(DEFAULT) as http:
            with pytest.raises(httpx2.ConnectError, match="refusing to connect"):
                await http.get(url)
    assert target.connections == 0
    async with guarded_client(NetworkPolicy(allow_private_networks=True)) as http:
        response = await http.get(f"http://127.0.0.1:{target.port}/")
    assert response.text == "ok"
    assert target.connections == 1


async def test_redirects_are_not_followed_and_each_followed_hop_is_checked_again(listeners: Any) -> None:
    internal = await listeners(ok(b"secret"))
    front = await listeners(redirect(f"http://127.0.0.1:{internal.port}/latest/meta-data"))
    policy = NetworkPolicy.build(False, ["front.test"], [])
    resolve = table({"front.test": ["127.0.0.1"]})
    async with guarded_client(policy, resolve=resolve) as http:
        response = await http.get(f"http://front.test:{front.port}/")
        assert response.status_code == 302  # not followed by default
        with pytest.raises(httpx2.ConnectError, match="127.0.0.1 is loopback"):
            await http.get(f"http://front.test:{front.port}/", follow_redirects=True)
    assert internal.connections == 0
