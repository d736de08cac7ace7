"""The template engine: Go text/template syntax with Packer's functions, and Go's error words."""

from __future__ import annotations

import datetime as dt

import pytest

from builders.template.functions import RenderContext, clean_resource_name, render_keep_dot_fields, render_string
from builders.template.gotemplate.errors import GoTemplateError
from builders.template.gotemplate.gostd import go_time_format
from builders.template.loader import DocumentError, parse_json_bytes
from builders.template.validate import GoVersion

WHEN = dt.datetime(2006, 1, 2, 15, 4, 5, 123456, tzinfo=dt.UTC)


def ctx(**kw: object) -> RenderContext:
    base: dict[str, object] = {"user_variables": {"a": "x-y-z", "v": "12.5.0", "n": "Hello World"},
                               "build_name": "deb", "build_type": "qemu", "template_path": "/srv/t/tpl.json",
                               "init_time": WHEN}
    base.update(kw)
    return RenderContext(**base)  # type: ignore[arg-type]


GOOD = [
    ("plain text", "plain text"),
    ("{{user `a`}}", "x-y-z"),
    ('{{ user "a" }}', "x-y-z"),
    ("{{ split (user `a`) \"-\" 2 }}", "z"),
    ("{{ split \"a,b\" \"\" 1 }}", ","),
    ("{{ replace \".\" \"-\" 1 (user `v`) }}", "12-5.0"),
    ("{{ replace \".\" \"-\" -1 (user `v`) }}", "12-5-0"),
    ("{{ user `v` | replace \".\" \"_\" 1 }}", "12_5.0"),
    ("{{ replace_all \".\" \"\" (user `v`) }}", "1250"),
    ("{{ user `v` | replace_all \".\" \"/\" }}", "12/5/0"),
    ("{{ upper (user `n`) }}/{{ user `n` | lower }}", "HELLO WORLD/hello world"),
    ("{{ clean_resource_name (user `n`) }}", "hello-world"),
    ("{{ isotime | clean_resource_name }}", "2006-01-02t15-04-05z"),
    ("{{ build_name }}.{{ build_type }}", "deb.qemu"),
    ("{{ template_dir }}", "/srv/t"),
    ("{{ timestamp }}", "1136214245"),
    ("{{ isotime }}", "2006-01-02T15:04:05Z"),
    ('{{ isotime "2006-01-02" }}', "2006-01-02"),
    ('{{ isotime "Mon Jan _2 15:04:05 MST 2006" }}', "Mon Jan  2 15:04:05 UTC 2006"),
    ('{{ isotime "06.01.02 3:04PM -0700 .000 .999999" }}', "06.01.02 3:04PM +0000 .123 .123456"),
    ('{{ strftime "%Y%m%d" }}', "20060102"),
    ('{{ packer_version }}', "1.13.0"),
    ("a {{- ` b ` -}} c", "a b c"),
    ("a {{- /* comment */ -}} c", "ac"),
    ("{{/* just a comment */}}x", "x"),
    ('{{ "quoted \\"esc\\" \\t" }}', 'quoted "esc" \t'),
    ("{{ `raw \\n` }}", "raw \\n"),
    ("{{ 42 }} {{ true }}", "42 true"),
    ('{{ printf "%s-%d" (user `a`) 7 }}', "x-y-z-7"),
    ('{{ if eq (user `a`) "x-y-z" }}yes{{ else }}no{{ end }}', "yes"),
    ('{{ if user `missing` }}yes{{ else if user `a` }}second{{ end }}', "second"),
    ("{{ .HTTPIP }}:{{ .HTTPPort }}", "{{ .HTTPIP }}:{{ .HTTPPort }}"),
    ("{{.Vars}} sudo '{{.Path}}'", "{{.Vars}} sudo '{{.Path}}'"),
    ("{{ build `Host` }}", "{{.Host}}"),
]


@pytest.mark.parametrize("text,expected", GOOD)
def test_render(text: str, expected: str) -> None:
    assert render_string(text, ctx()) == expected


def test_dot_fields_render_from_generated_data() -> None:
    c = ctx(data={"HTTPIP": "10.0.2.2", "HTTPPort": 8100, "Host": "127.0.0.1"})
    assert render_string("{{ .HTTPIP }}:{{ .HTTPPort }} {{ .Other }}", c) == "10.0.2.2:8100 {{ .Other }}"
    assert render_string("{{ build `Host` }}", c) == "127.0.0.1"


def test_env_only_in_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_T", "val")
    assert render_string("{{ env `SF_T` }}", ctx(enable_env=True)) == "val"
    with pytest.raises(GoTemplateError) as info:
        render_string("{{ env `SF_T` }}", ctx())
    assert str(info.value) == ('template: root:1:3: executing "root" at <env `SF_T`>: error calling env: env vars '
                               "are not allowed here")


def test_render_keep_dot_fields_for_variables() -> None:
    assert render_keep_dot_fields("{{ .HTTPIP }}/{{user `a`}}/{{.Name}}", ctx()) == "{{ .HTTPIP }}/x-y-z/{{.Name}}"


BAD = [
    ("{{ nope }}", 'template: root:1: function "nope" not defined'),
    ("line1\n{{ nope }}", 'template: root:2: function "nope" not defined'),
    ("{{ split `a` }}", 'template: root:1:3: executing "root" at <split>: wrong number of args for split: want 3 '
                        "got 1"),
    ("{{ upper }}", 'template: root:1:3: executing "root" at <upper>: wrong number of args for upper: want 1 got 0'),
    ('{{ split "a" "," "1" }}', 'template: root:1:17: executing "root" at <"1">: expected integer; found "1"'),
    ("{{ upper 3 }}", 'template: root:1:9: executing "root" at <3>: expected string; found 3'),
    ('{{ split "a,b" "," 5 }}', 'template: root:1:3: executing "root" at <split "a,b" "," 5>: error calling split: '
                                "the substring 5 was unavailable using the separator value, ,, only 2 values were "
                                "found"),
    ('{{ isotime "a" "b" }}', 'template: root:1:3: executing "root" at <isotime "a" "b">: error calling isotime: '
                              "too many values, 1 needed: [a b]"),
    ("{{ user `a` ", "template: root:1: unclosed action"),
    ('{{ "abc }}', "template: root:1: unterminated quoted string"),
    ("{{ `abc }}", "template: root:1: unterminated raw quoted string"),
    ("{{ user `a` | }}", "template: root:1: missing value for command"),
    ("{{}}", "template: root:1: missing value for command"),
    ("{{ # }}", "template: root:1: unrecognized character in action: U+0023 '#'"),
    ("{{ end }}", "template: root:1: unexpected {{end}}"),
    ("{{ if true }}x", "template: root:1: unexpected EOF"),
    ("{{/* open", "template: root:1: unclosed comment"),
    ("{{ (user `a` }}", "template: root:1: unclosed left paren"),
    ('{{ "a" "b" }}', 'template: root:1:3: executing "root" at <"a">: can\'t give argument to non-function "a"'),
    ("{{ range . }}{{ end }}", "template: root:1: {{range}} is not supported in stemforge templates"),
]


@pytest.mark.parametrize("text,expected", BAD)
def test_go_error_words(text: str, expected: str) -> None:
    with pytest.raises(GoTemplateError) as info:
        render_string(text, ctx())
    assert str(info.value) == expected


def test_build_name_not_available_without_build() -> None:
    with pytest.raises(GoTemplateError, match="error calling build_name: build_name not available"):
        render_string("{{ build_name }}", ctx(build_name=""))


def test_user_missing_in_variables_pass_is_an_error_elsewhere_empty() -> None:
    c = ctx()
    assert render_string("[{{ user `zz` }}]", c) == "[]" and c.missing_user_variables == {"zz"}
    with pytest.raises(GoTemplateError, match="Error: variable not set: zz"):
        render_string("{{ user `zz` }}", ctx(enable_env=True))


def test_go_time_layouts() -> None:
    pm = dt.datetime(2024, 12, 31, 23, 5, 9, tzinfo=dt.UTC)
    assert go_time_format(pm, "January 2, 2006 at 3:04pm (MST) Z07:00 002") == \
        "December 31, 2024 at 11:05pm (UTC) Z 366"
    assert go_time_format(pm, "2006-01-02T15:04:05.000Z07:00") == "2024-12-31T23:05:09.000Z"
    assert go_time_format(pm, "20060102150405") == "20241231230509"


def test_clean_resource_name() -> None:
    assert clean_resource_name("My Image_v1.2/Final") == "my-image-v1-2-final"


def test_clean_resource_name_in_amazon_builds_keeps_case_and_ami_name_characters() -> None:
    """The amazon plugins register their own clean_resource_name: only what an AMI name may not hold changes."""
    text = "{{ clean_resource_name (user `n`) }}"
    assert render_string(text, ctx(build_type="amazon-ebs", user_variables={"n": "My Image (v1.2)/x:y*z"})) == \
        "My Image (v1.2)/x-y-z"
    assert render_string(text, ctx(user_variables={"n": "My Image (v1.2)/x:y*z"})) == "my-image--v1-2--x-y-z"


def test_go_version_compare() -> None:
    assert str(GoVersion.parse("v1.10")) == "1.10.0"
    assert GoVersion.parse("1.9.0-beta1").key() < GoVersion.parse("1.9.0").key() < GoVersion.parse("1.10.0").key()


# Go encoding/json's scanner messages and offsets (SyntaxError.Offset = bytes read)
JSON_BAD = [
    (b'{"a" 1}', "invalid character '1' after object key", 6),
    (b'{"a": 1 "b": 2}', "invalid character '\"' after object key:value pair", 9),
    (b"[1 2]", "invalid character '2' after array element", 4),
    (b'{"a": tru}', "invalid character '}' in literal true (expecting 'e')", 10),
    (b'{"a": nul', "unexpected end of JSON input", 9),
    (b'{"a": 01}', "invalid character '1' after object key:value pair", 8),
    (b'{"a": "x\\q"}', "invalid character 'q' in string escape code", 10),
    (b'{"a": 1.}', "invalid character '}' after decimal point in numeric literal", 9),
    (b'{"a": -}', "invalid character '}' in numeric literal", 8),
    (b'{"a": 1e}', "invalid character '}' in exponent of numeric literal", 9),
    (b'{"a": "\\u12x4"}', "invalid character 'x' in \\u hexadecimal character escape", 12),
    (b"{} x", "invalid character 'x' after top-level value", 4),
    (b'{"a": "\n"}', "invalid character '\\n' in string literal", 8),
    (b"", "unexpected end of JSON input", 0),
    (b"{,}", "invalid character ',' looking for beginning of object key string", 2),
    (b'{"a":}', "invalid character '}' looking for beginning of value", 6),
    (b'{"a": 1,}', "invalid character '}' looking for beginning of object key string", 9),
    (b"[1,]", "invalid character ']' looking for beginning of value", 4),
    (b"\xef\xbb\xbf{}", "invalid character '\u00ef' looking for beginning of value", 1),
]


@pytest.mark.parametrize("data,message,offset", JSON_BAD)
def test_json_errors_match_go(data: bytes, message: str, offset: int) -> None:
    with pytest.raises(DocumentError) as info:
        parse_json_bytes(data)
    first = str(info.value).split("\n")[0]
    assert first == f"Error parsing JSON: {message}"
    assert f"(offset {offset}):" in str(info.value)


def test_json_values() -> None:
    assert parse_json_bytes(b' {"a": [1, 2.5, -0, 1e3, true, false, null, "\\u00e9\\n"], "b": {}} ') == {
        "a": [1, 2.5, 0, 1000.0, True, False, None, "\u00e9\n"], "b": {}}
