"""Which addresses a Gateway's listeners bind (GatewayStaticAddresses).

A Gateway may request addresses in `spec.addresses`. cilia binds IP addresses only (type `IPAddress`, the
API's default); any other type (`Hostname`, `NamedAddress`, a domain-prefixed one) refuses the Gateway
(`Accepted=False`, `UnsupportedAddress`), as does a value that is not an IP address. When the operator
names the addresses Gateways may request (`--gateway-address-pool CIDR`, repeatable), a requested address
outside them is not usable: the Gateway is accepted but not programmed (`Programmed=False`,
`AddressNotUsable`) and nothing is bound, since an address this host does not own would fail Envoy's bind
(or take one meant for someone else). Without a pool every IP address is bound as given. A Gateway that
requests no address, or only entries without a value (GatewayAddressEmpty), gets the default address
(`--gateway-address`). The listeners bind every assigned address, and status.addresses lists them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from cilia.diagnostics import Issue
from cilia.k8s.objects import KubeObject
from cilia.translate.gateway_common import Cond

IP_TYPES = ("IPAddress", "")  # "" : a type left out (the API server defaults it to IPAddress)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class GatewayAddresses:
    """What a Gateway binds (in spec order, each once; empty when refused or not usable), and why not."""

    bound: tuple[str, ...]
    refused: Cond | None = None  # Accepted=False: an address cilia cannot take at all
    unusable: Cond | None = None  # Programmed=False: a valid address outside the pool
    issues: tuple[Issue, ...] = ()


def parse_pool(cidrs: Iterable[str]) -> tuple[str, ...]:
    """The pool as normalised CIDRs (a bare address is its own /32 or /128); ValueError names a bad entry."""
    out = []
    for c in cidrs:
        try:
            out.append(str(ipaddress.ip_network(c.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{c!r} is not an IP network (CIDR such as 127.0.62.0/24, or an address)") from None
    return tuple(dict.fromkeys(out))


@lru_cache(maxsize=16)
def _networks(pool: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in pool)


def gateway_addresses(obj: KubeObject, default: str, pool: tuple[str, ...] = ()) -> GatewayAddresses:
    """The addresses Gateway `obj` binds given the default address and the operator's pool (empty: any)."""
    requested: list[tuple[int, str]] = []
    for i, a in enumerate(obj.spec.addresses):
        where = f"spec.addresses[{i}]"
        if a.type not in IP_TYPES:
            return GatewayAddresses((), Cond("Accepted", False, "UnsupportedAddress",
                                             f"{where}: address type {a.type!r} is not supported (only IPAddress)"))
        if not a.value:
            continue
        try:
            ipaddress.ip_address(a.value)
        except ValueError:
            why = f"{a.value!r} is not an IP address"
            return GatewayAddresses((), Cond("Accepted", False, "UnsupportedAddress", f"{where}.value: {why}"),
                                    issues=(Issue(str(obj.ref), f"{where}.value", why),))
        requested.append((i, a.value))
    if not requested:
        return GatewayAddresses((default,))
    nets = _networks(pool)
    outside = [(i, v) for i, v in requested if nets and not any(ipaddress.ip_address(v) in n for n in nets)]
    if outside:
        names = ", ".join(f"spec.addresses[{i}] {v}" for i, v in outside)
        return GatewayAddresses((), unusable=Cond(
            "Programmed", False, "AddressNotUsable",
            f"{names}: not in the Gateway address pool ({', '.join(pool)}); request an address from the pool, "
            "or add it with --gateway-address-pool"))
    return GatewayAddresses(tuple(dict.fromkeys(v for _i, v in requested)))
