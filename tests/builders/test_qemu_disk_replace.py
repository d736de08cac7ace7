"""``disk.replace_freeing_later``: the convert step's rename over the old disk, whose freeing runs off the critical
path. The old name is gone at once, the new content is in place, and the old inode's blocks are released."""

from __future__ import annotations

import os
from pathlib import Path

from builders.builder_types.qemu import disk


def test_replace_drops_the_old_name_at_once_and_frees_it_later(tmp_path: Path) -> None:
    old = tmp_path / "vm"
    new = tmp_path / "vm.convert"
    old.write_bytes(b"o" * (4 << 20))
    new.write_bytes(b"n" * 1024)
    old_inode = old.stat().st_ino
    disk.replace_freeing_later(new, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vm"]
    assert old.read_bytes() == b"n" * 1024 and old.stat().st_ino != old_inode
    disk.wait_for_frees()
    # no descriptor of this process still holds the replaced file
    held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [h for h in held if h.endswith("vm (deleted)")]


def test_replace_onto_a_missing_target_is_a_plain_rename(tmp_path: Path) -> None:
    new = tmp_path / "vm.convert"
    new.write_bytes(b"x")
    disk.replace_freeing_later(new, tmp_path / "vm")
    disk.wait_for_frees()
    assert (tmp_path / "vm").read_bytes() == b"x" and not new.exists()
