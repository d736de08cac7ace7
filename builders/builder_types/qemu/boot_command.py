"""``boot_command``: Packer's boot command language, typed through the QEMU monitor (QMP) instead of VNC.

Supported (Packer's grammar, special keys case-insensitive): literal US-keyboard ASCII text; ``<enter>``
``<return>`` ``<esc>`` ``<bs>`` ``<del>`` ``<tab>`` ``<spacebar>`` ``<insert>`` ``<home>`` ``<end>`` ``<pageUp>``
``<pageDown>`` ``<up>`` ``<down>`` ``<left>`` ``<right>`` ``<menu>`` ``<f1>``..``<f12>``; modifiers
``<leftAlt>`` ``<rightAlt>`` ``<leftCtrl>`` ``<rightCtrl>`` ``<leftShift>`` ``<rightShift>`` ``<leftSuper>``
``<rightSuper>`` pressed alone or held with the ``On``/``Off`` suffix (``<leftCtrlOn>c<leftCtrlOff>``); ``<wait>``
(1s), ``<wait5>`` (seconds), ``<wait1m30s>`` (Go duration). A ``<`` that starts none of these is typed literally,
as in Packer. Characters a US keyboard cannot type (non-ASCII, control characters) are an error naming them:
nothing is silently dropped.

Fields rendered before parsing: ``{{ .HTTPIP }}``, ``{{ .HTTPPort }}``, ``{{ .Name }}``, ``{{ .SSHPublicKey }}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from stemforge_base.durations import parse_duration


class BootCommandError(ValueError):
    """The boot command cannot be typed; the message names the offending part."""


_SPECIAL = {
    "bs": "backspace", "del": "delete", "enter": "ret", "return": "ret", "esc": "esc", "tab": "tab",
    "spacebar": "spc", "insert": "insert", "home": "home", "end": "end", "pageup": "pgup", "pagedown": "pgdn",
    "up": "up", "down": "down", "left": "left", "right": "right", "menu": "menu",
    **{f"f{i}": f"f{i}" for i in range(1, 13)},
}
_MODIFIERS = {
    "leftalt": "alt", "rightalt": "alt_r", "leftctrl": "ctrl", "rightctrl": "ctrl_r", "leftshift": "shift",
    "rightshift": "shift_r", "leftsuper": "meta_l", "rightsuper": "meta_r",
}
_UNSHIFTED = {
    " ": "spc", "-": "minus", "=": "equal", "[": "bracket_left", "]": "bracket_right", "\\": "backslash",
    ";": "semicolon", "'": "apostrophe", "`": "grave_accent", ",": "comma", ".": "dot", "/": "slash",
    "\n": "ret", "\t": "tab",
}
_SHIFTED = {
    "!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8", "(": "9", ")": "0",
    "_": "minus", "+": "equal", "{": "bracket_left", "}": "bracket_right", "|": "backslash", ":": "semicolon",
    '"': "apostrophe", "~": "grave_accent", "<": "comma", ">": "dot", "?": "slash",
}
_EXPR = re.compile(r"<([A-Za-z0-9.]+)>")
_FIELD = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


@dataclass(frozen=True)
class Press:
    """Press and release ``keys`` together (e.g. ``["shift", "a"]``)."""

    keys: tuple[str, ...]


@dataclass(frozen=True)
class Hold:
    """Hold (``down``) or release a modifier."""

    key: str
    down: bool


@dataclass(frozen=True)
class Wait:
    seconds: float


Action = Press | Hold | Wait


def char_keys(ch: str) -> tuple[str, ...]:
    """The qcodes that type ``ch`` on a US keyboard; BootCommandError if none can."""
    if "a" <= ch <= "z" or "0" <= ch <= "9":
        return (ch,)
    if "A" <= ch <= "Z":
        return ("shift", ch.lower())
    if ch in _UNSHIFTED:
        return (_UNSHIFTED[ch],)
    if ch in _SHIFTED:
        return ("shift", _SHIFTED[ch])
    raise BootCommandError(f"character {ch!r} (U+{ord(ch):04X}) cannot be typed on a US keyboard")


def _expression(name: str) -> list[Action] | None:
    low = name.lower()
    if low.startswith("wait"):
        arg = name[4:]
        if arg == "":
            return [Wait(1.0)]
        if arg.isdigit():
            return [Wait(float(arg))]
        try:
            return [Wait(parse_duration(arg, mode="packer"))]
        except ValueError:
            return None
    if low in _SPECIAL:
        return [Press((_SPECIAL[low],))]
    if low in _MODIFIERS:
        return [Press((_MODIFIERS[low],))]
    for suffix, down in (("on", True), ("off", False)):
        if low.endswith(suffix) and low[: -len(suffix)] in _MODIFIERS:
            return [Hold(_MODIFIERS[low[: -len(suffix)]], down)]
        if low.endswith(suffix) and low[: -len(suffix)] in _SPECIAL:
            return [Hold(_SPECIAL[low[: -len(suffix)]], down)]
    return None


def parse_boot_command(text: str, *, check_only: bool = False) -> list[Action]:
    """Translate ``text`` into key actions. With ``check_only`` template fields (``{{ ... }}``) are treated as
    typable text (they are rendered later). Raises BootCommandError listing every character it cannot type."""
    actions: list[Action] = []
    bad: list[str] = []
    pos = 0
    while pos < len(text):
        m = _EXPR.match(text, pos)
        if m:
            expr = _expression(m.group(1))
            if expr is not None:
                actions.extend(expr)
                pos = m.end()
                continue
        ch = text[pos]
        try:
            actions.append(Press(char_keys(ch)))
        except BootCommandError:
            bad.append(f"{ch!r} (U+{ord(ch):04X}) at position {pos}")
        pos += 1
    if bad:
        raise BootCommandError("cannot be typed through the QEMU monitor (US keyboard): " + ", ".join(bad))
    return actions


def render_fields(text: str, data: Mapping[str, object], render: Callable[[str], object] | None = None) -> str:
    """Replace ``{{ .Field }}`` with ``data[Field]`` (unknown fields are an error naming them), then pass the rest
    through the template engine's ``render`` (functions like ``user`` the runner left for later)."""

    def field(m: re.Match[str]) -> str:
        if m.group(1) not in data:
            raise BootCommandError(f"unknown template field .{m.group(1)} (available: "
                                   + ", ".join(f".{k}" for k in sorted(data)) + ")")
        return str(data[m.group(1)])

    out = _FIELD.sub(field, text)
    if render is not None and "{{" in out:
        out = str(render(out))
    return out


def type_actions(actions: list[Action], send: Callable[[str, dict[str, object]], object],
                 sleep: Callable[[float], None], key_interval: float) -> None:
    """Send ``actions`` through ``send(qmp_command, arguments)``; ``sleep`` must honour cancellation."""
    for action in actions:
        if isinstance(action, Wait):
            sleep(action.seconds)
        elif isinstance(action, Press):
            send("send-key", {"keys": [{"type": "qcode", "data": k} for k in action.keys], "hold-time": 30})
            sleep(key_interval)
        else:
            send("input-send-event", {"events": [
                {"type": "key", "data": {"down": action.down, "key": {"type": "qcode", "data": action.key}}}]})
            sleep(key_interval)
