"""Packer's IP network functions (cidrhost cidrnetmask cidrsubnet cidrsubnets).

Semantics and error words follow go-cty's stdlib / Terraform's functions, as Packer uses them."""

from __future__ import annotations

import ipaddress
from typing import Any

from builders.template.hcl2.evaluator import FunctionArgumentError
from builders.template.hcl2.stdlib.args import Function, as_int, as_string


def _net(prefix: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(as_string(prefix), strict=False)
    except ValueError as e:
        raise FunctionArgumentError(f"invalid CIDR expression: {e}", 0) from None


def f_cidrhost(prefix: Any, hostnum: Any) -> Any:
    net, n = _net(prefix), as_int(hostnum, 1)
    size = net.num_addresses
    if n < -size or n >= size:
        raise FunctionArgumentError(f"prefix of {net.prefixlen} does not accommodate a host numbered {n}", 1)
    base = int(net.network_address)
    return str(ipaddress.ip_address(base + (n if n >= 0 else size + n)))


def f_cidrnetmask(prefix: Any) -> Any:
    net = _net(prefix)
    if net.version != 4:
        raise FunctionArgumentError("only IPv4 networks are supported", 0)
    return str(net.netmask)


def f_cidrsubnet(prefix: Any, newbits: Any, netnum: Any) -> Any:
    net, bits, num = _net(prefix), as_int(newbits, 1), as_int(netnum, 2)
    new_len = net.prefixlen + bits
    if new_len > net.max_prefixlen:
        raise FunctionArgumentError(f"insufficient address space to extend prefix of {net.prefixlen} by {bits}", 1)
    if num < 0 or num >= 2 ** bits:
        raise FunctionArgumentError(f"prefix extension of {bits} does not accommodate a subnet numbered {num}", 2)
    base = int(net.network_address) + (num << (net.max_prefixlen - new_len))
    return f"{ipaddress.ip_address(base)}/{new_len}"


def f_cidrsubnets(prefix: Any, *newbits: Any) -> Any:
    net = _net(prefix)
    out: list[str] = []
    current = int(net.network_address)
    end = int(net.broadcast_address)
    for i, nb in enumerate(newbits):
        bits = as_int(nb, i + 1)
        length = net.prefixlen + bits
        if length > net.max_prefixlen:
            raise FunctionArgumentError(f"would extend prefix to {length} bits, which is too long for an IPv"
                                        f"{net.version} address", i + 1)
        block = 1 << (net.max_prefixlen - length)
        current = (current + block - 1) // block * block
        if current + block - 1 > end:
            raise FunctionArgumentError(f"not enough remaining address space for a subnet with a prefix of "
                                        f"{length} bits after {out[-1] if out else net}", i + 1)
        out.append(f"{ipaddress.ip_address(current)}/{length}")
        current += block
    return out


FUNCTIONS: dict[str, Function] = {
    "cidrhost": f_cidrhost, "cidrnetmask": f_cidrnetmask, "cidrsubnet": f_cidrsubnet, "cidrsubnets": f_cidrsubnets,
}
