"""stemforge_base.redaction: the literal matching shared by the CPI's Redactor and the builders' SensitiveValues,
and the JSON-escaped spelling a Redactor registers without importing json. (Redactor's contract as a whole:
tests/cpi/test_cpi_redaction.py and tests/cpi/test_cpi_hardening.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from builders.template.sensitive import MASK, SensitiveValues
from stemforge_base.redaction import REDACTED, Redactor, _json_escaped, literal_pattern


def test_literal_pattern_prefers_the_longest_and_escapes() -> None:
    pattern = literal_pattern(["pass", "password-1", "a.b*c", "pass"])
    assert pattern is not None
    assert pattern.sub("#", "password-1 pass a.b*c aXbbc") == "# # # aXbbc"
    assert literal_pattern([]) is None


@pytest.mark.parametrize("value", ['quo"te\\back', "é\u2028\x00ctl", "tab\tnew\nline", "plain"])
def test_json_escaped_spelling_matches_json(value: str) -> None:
    assert _json_escaped(value) == json.dumps(value)[1:-1]


def test_redactor_and_sensitive_values_mask_the_same_matches() -> None:
    secrets = ["s3cret", "s3cret-longer", 'with"quote']
    redactor, sensitive = Redactor(), SensitiveValues(secrets)
    for secret in secrets:
        redactor.add(secret)
    text = 's3cret-longer then s3cret then {"k": "with\\"quote"} then with"quote'
    assert redactor.scrub(text) == f"{REDACTED} then {REDACTED} then {{\"k\": \"{REDACTED}\"}} then {REDACTED}"
    assert sensitive.mask(text) == f'{MASK} then {MASK} then {{"k": "with\\"quote"}} then {MASK}'


def test_import_is_cheap() -> None:
    """The CPI's info path imports this module: no json, no re until a secret is scrubbed."""
    code = ("import sys, stemforge_base.redaction as r; heavy = {'json', 're'} & set(sys.modules); "
            "r.Redactor().add('x' * 8); print(sorted(heavy), 'json' in sys.modules)")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "False"]
