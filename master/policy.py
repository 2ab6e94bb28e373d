"""What the master may health-check: the check-URL policy.

A registration names the URL the master will GET, and anyone who may register may name any
URL, so without a rule the master fetches what it is told: the cloud's metadata service
(169.254.169.254, with its credentials), a link-local device, a loopback admin port.
By default link-local networks and the metadata addresses are refused and everything else
allowed; `--check-allow CIDR[,CIDR...]` allows exactly those networks instead. A URL that
carries user info (`http://user:pass@host/`) is refused either way: a check sends no
credentials.

A literal address is judged when the service registers (400 `check_url_refused`); a name
is judged at every check, on the addresses it resolves to, and the connection goes to the
address judged (the resolver below hands aiohttp only allowed ones), so a name that later
resolves elsewhere (DNS rebinding) cannot reach a refused address.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Final

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from master.shared.probe import CheckRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LINK_LOCAL: Final[tuple[IPNetwork, ...]] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
)
# The instance metadata services of the clouds the master may run in (link-local ones are
# refused with their networks already; these are the others, and the exact addresses,
# for a clear message).
METADATA: Final[frozenset[IPAddress]] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "fd00:ec2::254",  # AWS, over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
    )
)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """`10.0.0.0/8,fd00::/8,192.0.2.7` -> networks; ValueError naming the bad one."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an address or CIDR network") from None
    if not networks:
        raise ValueError("names no network")
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class CheckPolicy:
    allow: tuple[IPNetwork, ...] = ()  # empty: all but link-local and metadata addresses

    def refusal(self, address: IPAddress) -> str | None:
        """Why the master may not check `address`; None if it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
        if self.allow:
            if any(address in network for network in self.allow):
                return None
            return f"{address} is outside --check-allow"
        if address in METADATA:
            return f"{address} is a cloud metadata address"
        if any(address in network for network in LINK_LOCAL):
            return f"{address} is link-local"
        return None

    def url_refusal(self, url: str) -> str | None:
        """Why a check URL is refused at registration; None if it may be registered (a
        name is judged again at each check, on what it resolves to)."""
        parsed = URL(url)
        if parsed.user is not None or parsed.password is not None:
            return "must not carry user info (user:password@): a check sends no credentials"
        host = (parsed.host or "").strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if ":" in host or host.replace(".", "").isdigit():
                # aiohttp takes this for an address and connects without a resolver (so
                # without PolicyResolver), and the system may read `2852039166` or
                # `169.254.43518` as inet_aton does (169.254.169.254): judge no spelling
                # but the usual one.
                return f"{host} is not an address in its usual form (a.b.c.d, or IPv6)"
            return None
        return self.refusal(address)

    def describe(self) -> str:
        if self.allow:
            return "only " + ", ".join(str(n) for n in self.allow)
        return "all but link-local and cloud metadata addresses"


class PolicyResolver(AbstractResolver):
    """Resolves names as aiohttp does, then keeps only the addresses the policy allows: the
    connection is made to an address judged, whatever the name resolves to next time."""

    def __init__(self, policy: CheckPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed, reasons = [], []
        for result in found:
            reason = self.policy.refusal(ipaddress.ip_address(result["host"]))
            if reason is None:
                allowed.append(result)
            else:
                reasons.append(reason)
        if not allowed:
            raise CheckRefused(f"{host} resolves only to refused addresses: {'; '.join(reasons)}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def check_allow_option(value: Any, field: str) -> tuple[IPNetwork, ...]:
    from master.model import FieldError

    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise FieldError(field, "must be CIDR networks separated by commas, like 10.0.0.0/8")
    try:
        return parse_networks(value)
    except ValueError as exc:
        raise FieldError(field, str(exc)) from None
