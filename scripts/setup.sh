#!/usr/bin/env bash
# Set up a Debian 12 machine for stemforge, idempotently: system packages, libvirt daemons (never the
# predefined 'default' network), a virtual environment with stemforge installed, then run the main job
# (`stemforge demo`: a VM through the CPI end to end on libvirt). `--no-demo` stops after the set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN_DEMO=1
[[ "${1:-}" == "--no-demo" ]] && RUN_DEMO=0

say() { printf '[setup %(%H:%M:%S)T] %s\n' -1 "$*"; }
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

mapfile -t APT_PACKAGES < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' scripts/apt-packages.txt)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${#missing[@]} Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  # policy-rc.d 101: packages (openssh-server, dnsmasq, ...) must not start system services; tests start their
  # own instances on loopback or inside network namespaces
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [[ -e $policy ]] && had_policy=1
  ((had_policy)) || { printf '#!/bin/sh\nexit 101\n' | $SUDO tee $policy >/dev/null; $SUDO chmod +x $policy; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  ((had_policy)) || $SUDO rm -f $policy
else
  say "Debian packages: all present"
fi
# apt lists are needed to download the test image's kernel package
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then $SUDO apt-get update -q; fi

# /dev/kvm as Debian's udev rule leaves it (group kvm, 0660). Without udev it is root-only, libvirt then sees
# KVM appear and vanish between probes and re-probes QEMU on every call (tens of seconds per define).
# Only when wrong: every change of its ctime makes libvirt re-probe QEMU once more.
if [[ -e /dev/kvm ]] && [[ "$(stat -c '%G %a' /dev/kvm)" != "kvm 660" ]]; then
  $SUDO chgrp kvm /dev/kvm && $SUDO chmod 0660 /dev/kvm
fi

# The predefined 'default' network puts a bridge with a private address in the host namespace: keep it off.
$SUDO rm -f /etc/libvirt/qemu/networks/autostart/default.xml

libvirt_up() { timeout 20 virsh -c qemu:///system version >/dev/null 2>&1; }
if ! libvirt_up; then
  if [[ -d /run/systemd/system ]]; then
    say "starting libvirtd (systemd)"
    $SUDO systemctl start virtlogd.socket libvirtd.socket libvirtd.service || true
  fi
  if ! libvirt_up; then
    say "starting virtlogd and libvirtd (no systemd)"
    pgrep -x virtlogd >/dev/null || $SUDO virtlogd -d
    pgrep -x libvirtd >/dev/null || $SUDO libvirtd -d
    for _ in $(seq 1 50); do libvirt_up && break; sleep 0.2; done
  fi
fi
libvirt_up || { echo "libvirtd did not come up; see journalctl -u libvirtd or run 'libvirtd' in a terminal" >&2; exit 1; }
if virsh -c qemu:///system net-info default 2>/dev/null | grep -q "Active:.*yes"; then
  say "stopping libvirt's predefined 'default' network"
  $SUDO virsh -c qemu:///system net-destroy default >/dev/null
fi
say "libvirt: $(virsh -c qemu:///system version 2>/dev/null | grep -m1 'Running hypervisor' | sed 's/^ *//')"

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  say "creating the virtual environment .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.stemforge-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  say "installing stemforge and its Python dependencies into .venv"
  # compat mode: a plain .pth path entry; the default finder costs ~20 ms on every CPI start
  # every role's extra (libvirt, aws, metal, build, terraform, ci) and the test tools: a developer runs all of it
  .venv/bin/pip install -q --disable-pip-version-check -e ".[all,dev]" --config-settings editable_mode=compat
  touch "$stamp"
fi
say "ready: $ROOT/.venv/bin/stemforge"

if ((RUN_DEMO)); then
  exec .venv/bin/stemforge demo
fi
