"""Pieces of ``metal serve`` that need no network: dnsmasq's command line (checked by the real ``dnsmasq --test``),
host entries, the TFTP root, iPXE script quoting and the serve command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpi.providers.baremetal.serve import ipxe
from cpi.providers.baremetal.serve.dnsmasq import (
    DnsmasqConfig,
    DnsmasqError,
    check_config,
    hosts_text,
    prepare_tftp_root,
)
from stemforge.cli import build_parser

TOKEN = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U1v"


def _config(tmp_path: Path, **overrides: object) -> DnsmasqConfig:
    values: dict[str, object] = {
        "interface": "sfbr0",
        "dhcp_range": ("10.9.8.100", "10.9.8.199"),
        "boot_url": "http://10.9.8.1:8080/boot.ipxe",
        "tftp_root": tmp_path / "tftp",
        "work_dir": tmp_path / "dnsmasq",
    }
    values.update(overrides)
    return DnsmasqConfig(**values)  # type: ignore[arg-type]


def test_dnsmasq_command_line_is_what_dnsmasq_accepts(tmp_path: Path) -> None:
    config = _config(tmp_path, enrolled_only=True, log_dhcp=True)
    argv = config.argv()
    for flag in (
        "--conf-file=/dev/null",
        "--no-daemon",
        "--port=0",
        "--interface=sfbr0",
        "--bind-interfaces",
        "--except-interface=lo",
        "--dhcp-range=10.9.8.100,10.9.8.199,1h",
        "--enable-tftp",
        f"--tftp-root={tmp_path / 'tftp'}",
        "--dhcp-match=set:ipxe,175",
        "--dhcp-boot=tag:ipxe,http://10.9.8.1:8080/boot.ipxe",
        "--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe",
        "--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi",
        f"--dhcp-leasefile={tmp_path / 'dnsmasq' / 'dnsmasq.leases'}",
        f"--dhcp-hostsfile={tmp_path / 'dnsmasq' / 'dnsmasq.hosts'}",
        "--dhcp-ignore=tag:!enrolled",
        "--log-dhcp",
    ):
        assert flag in argv, flag
    assert not any("ra" in a.split("=")[0] for a in argv if a.startswith("--enable-ra") or a.startswith("--ra-"))
    check_config(config)  # the real dnsmasq --test
    with_ra = _config(tmp_path, router_advertisements=True)
    assert {"--enable-ra", "--dhcp-range=::,constructor:sfbr0,ra-only", "--ra-param=sfbr0,0,0"} <= set(with_ra.argv())
    check_config(with_ra)
    with pytest.raises(DnsmasqError, match=r"--lease-time bogus.*bad dhcp-range"):
        check_config(_config(tmp_path, lease_time="bogus"))


def test_host_entries(tmp_path: Path) -> None:
    text = hosts_text([("52:54:00:00:00:02", "n2"), ("52:54:00:00:00:01", "Node_1"), ("52:54:00:00:00:02", "n2")])
    assert text == "52:54:00:00:00:01,set:enrolled\n52:54:00:00:00:02,set:enrolled,n2\n"
    assert hosts_text([]) == ""


def test_tftp_root_gets_debian_ipxe_and_names_what_is_missing(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    created = prepare_tftp_root(root)
    assert sorted(p.name for p in created) == ["ipxe.efi", "undionly.kpxe"]
    assert (root / "undionly.kpxe").read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
    assert prepare_tftp_root(root) == []  # already there: nothing created, nothing to remove later
    empty = tmp_path / "no-ipxe"
    empty.mkdir()
    with pytest.raises(DnsmasqError, match=r"--tftp-root .*no undionly.kpxe there and none in .*no-ipxe"):
        prepare_tftp_root(tmp_path / "other", ipxe_dir=empty)
    assert not list((tmp_path / "other").iterdir())


def test_ipxe_scripts_quote_everything_they_embed() -> None:
    base = "http://10.9.8.1:8080"
    script = ipxe.ramdisk_script(base, "rack 1/${evil}", "deploy", TOKEN)
    kernel = next(line for line in script.splitlines() if line.startswith("kernel "))
    assert "sf.api=http://10.9.8.1:8080/v1/nodes/rack%201%2F%24%7Bevil%7D" in kernel
    assert "${" not in kernel
    assert kernel.split(" || ")[0].split(" ")[2:] == [
        "initrd=initrd.img", "console=ttyS0", "quiet", "loglevel=3",
        "sf.api=http://10.9.8.1:8080/v1/nodes/rack%201%2F%24%7Bevil%7D", f"sf.token={TOKEN}",
    ]  # fmt: skip
    for bad_token in ("short", "has space in it and is long enough", "x" * 200, "tok$en" * 4):
        with pytest.raises(ipxe.ScriptError) as excinfo:
            ipxe.ramdisk_script(base, "n1", "deploy", bad_token)
        assert bad_token not in str(excinfo.value)
    with pytest.raises(ipxe.ScriptError, match="kind"):
        ipxe.ramdisk_script(base, "n1", "rescue", TOKEN)
    for bad_base in ("http://10.9.8.1:8080/", "http://a b", "https://x", "http://${x}"):
        with pytest.raises(ipxe.ScriptError, match="base URL"):
            ipxe.boot_script(bad_base)
    assert "$" not in ipxe.exit_script("node ${x} has no job")


def test_serve_command_line() -> None:
    parser = build_parser()
    args = parser.parse_args(["metal", "serve", "--state-dir", "/s", "--listen", "10.1.2.1", "--interface", "sfbr0",
                              "--dhcp-range", "10.1.2.100,10.1.2.199", "--ramdisk-dir", "/r"])  # fmt: skip
    assert args.http_port == 8080 and args.dhcp_range == ("10.1.2.100", "10.1.2.199") and args.tftp_root is None
    for bad in (["--dhcp-range", "10.1.2.100"], ["--http-port", "70000"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["metal", "serve", "--state-dir", "/s", "--listen", "10.1.2.1", "--interface", "x",
                               "--dhcp-range", "10.1.2.100,10.1.2.199", "--ramdisk-dir", "/r", *bad])  # fmt: skip
