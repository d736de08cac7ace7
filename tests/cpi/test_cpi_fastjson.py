"""cpi.fastjson agrees with the standard library's json on valid and invalid documents."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from cpi import fastjson


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(2**70), 2**70)
    if kind == 2:
        return rng.uniform(-1e9, 1e9)
    if kind in (3, 4):
        alphabet = "abc\"\\\n\t\u00e9\u2603\U0001f600 /"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {str(_random_value(rng, 4)): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


@pytest.mark.parametrize("seed", range(300))
def test_round_trips_like_json(seed: int) -> None:
    value = _random_value(random.Random(seed))
    expected = json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    assert fastjson.dumps_compact(value) == expected
    assert fastjson.loads(expected) == json.loads(expected)
    spaced = json.dumps(value, indent=2)
    assert fastjson.loads(f" \n{spaced}\t ") == json.loads(spaced)


@pytest.mark.parametrize("text", ["", "   ", "{", "[1,", '{"a" 1}', '{"a":1}x', "[1] [2]", '"\x01"', "tru", "01",
                                  '{"a":1,}', "[,]", '"\\x"', "\ufeff{}", "1 2"])
def test_errors_match_json(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(fastjson.DecodeError) as got:
        fastjson.loads(text)
    assert (got.value.msg, got.value.lineno, got.value.colno) == (
        expected.value.msg, expected.value.lineno, expected.value.colno)


def test_hooks_and_constants() -> None:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate")
        return dict(items)

    with pytest.raises(ValueError, match="duplicate"):
        fastjson.loads('{"a":1,"a":2}', object_pairs_hook=pairs)

    def reject(name: str) -> Any:
        raise ValueError(f"{name} rejected")

    with pytest.raises(ValueError, match="NaN rejected"):
        fastjson.loads("[NaN]", parse_constant=reject)
    with pytest.raises(ValueError):
        fastjson.dumps_compact(float("nan"))
    with pytest.raises(TypeError):
        fastjson.dumps_compact({"a": object()})
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError):
        fastjson.dumps_compact(loop)
    with pytest.raises(RecursionError):
        fastjson.loads("[" * 100000 + "]" * 100000)


def test_syntax_errors_without_json_imported() -> None:
    """The C scanner needs json.decoder for its error type; fastjson must still report a DecodeError."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cpi import fastjson\n"
        "assert 'json.decoder' not in sys.modules\n"
        "try:\n"
        "    fastjson.loads('[\"abc')\n"
        "except fastjson.DecodeError as e:\n"
        "    print(e.msg, e.lineno, e.colno)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "Unterminated string starting at 1 2"
