"""This machine's IPv4 addresses, for egress gateway policies in file mode (where it is the gateway node):
whether an `egressIP` is local, and an `interface`'s first IPv4 address, as Cilium resolves it."""

from __future__ import annotations

import socket


def local_ipv4() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]] | None:
    """(every IPv4 address here, (interface, its first IPv4 address) per interface that has one); None
    where pyroute2 is not installed (then egress IPs are not checked and interfaces not resolved)."""
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return None

    ips: list[str] = []
    first: dict[str, str] = {}
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for msg in ipr.get_addr(family=socket.AF_INET):
            addr = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            if not addr:
                continue
            ips.append(addr)
            name = names.get(msg["index"])
            if name:
                first.setdefault(name, addr)
    return tuple(dict.fromkeys(ips)), tuple(sorted(first.items()))
