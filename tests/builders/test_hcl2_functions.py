"""Packer's HCL2 function library, one row per documented example / edge case (Packer's functions pages at
developer.hashicorp.com/packer/docs/templates/hcl_templates/functions, which follow Terraform's)."""

from __future__ import annotations

import base64
import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest

from builders.template.hcl2.diagnostics import HCLError
from builders.template.hcl2.evaluator import Evaluator, parse_expression
from builders.template.hcl2.functions import make_functions

NOW = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def call(expr: str, *, env_allowed: bool = False) -> Any:
    ev = Evaluator("f.pkr.hcl", make_functions(base_dir=Path.cwd(), now=NOW, env_allowed=env_allowed))
    return ev.evaluate(parse_expression(expr), {})


OK: list[tuple[str, Any]] = [
    # numeric
    ("abs(23)", 23), ("abs(0)", 0), ("abs(-12.4)", 12.4),
    ("ceil(5)", 5), ("ceil(5.1)", 6), ("floor(5)", 5), ("floor(4.9)", 4),
    ("log(16, 2)", 4), ("log(1, 10)", 0), ("floor(log(50, 10) * 1000)", 1698),
    ("max(12, 54, 3)", 54), ("max([12, 54, 3]...)", 54), ("min(12, 54, 3)", 3),
    ('parseint("100", 10)', 100), ('parseint("FF", 16)', 255), ('parseint("-10", 16)', -16),
    ('parseint("1011111011101111", 2)', 48879), ('parseint("aA", 62)', 656),
    ("pow(3, 2)", 9), ("pow(4, 0)", 1), ("signum(-13)", -1), ("signum(0)", 0), ("signum(344)", 1),
    ("sum([10, 13, 6, 4.5])", 33.5),
    # string
    ('chomp("hello\\n")', "hello"), ('chomp("hello\\r\\n")', "hello"), ('chomp("hello\\n\\n")', "hello"),
    ('format("Hello, %s!", "Ander")', "Hello, Ander!"), ('format("There are %d lights", 4)', "There are 4 lights"),
    ('format("%-5s|%5s|", "ab", "cd")', "ab   |   cd|"), ('format("%.2f %t %q %%", 3.14159, true, "x")',
                                                           '3.14 true "x" %'),
    ('format("%v %v", [1, "a"], 2)', '[1,"a"] 2'), ('format("%[2]s %[1]s", "a", "b")', "b a"),
    ('format("%08.3f|%x|%X|%o|%b|%e", 3.14159, 255, 255, 8, 5, 1500)', "0003.142|ff|FF|10|101|1.500000e+03"),
    ('formatlist("Hello, %s!", ["Valentina", "Ander"])', ["Hello, Valentina!", "Hello, Ander!"]),
    ('formatlist("%s=%s", ["a", "b"], "x")', ["a=x", "b=x"]),
    ('indent(2, "[\\n  foo,\\n  bar,\\n]\\n")', "[\n    foo,\n    bar,\n  ]\n  "),
    ('join(", ", ["foo", "bar", "baz"])', "foo, bar, baz"), ('join(", ", ["foo"])', "foo"),
    ('join("-", ["a"], ["b", "c"])', "a-b-c"),
    ('lower("HELLO")', "hello"), ('upper("hello")', "HELLO"), ('lower("АЛЛО!")', "алло!"),
    ('replace("1 + 2 + 3", "+", "-")', "1 - 2 - 3"), ('replace("hello world", "/w.*d/", "everybody")',
                                                      "hello everybody"),
    ('replace("hello world", "/(h)(e)/", "$2$1")', "ehllo world"),
    ('regex_replace("hello world", "w.*d", "everybody")', "hello everybody"),
    ('regex("[a-z]+", "53453453.345345aaabbbccc23454")', "aaabbbccc"),
    ('regex("(\\\\d\\\\d\\\\d\\\\d)-(\\\\d\\\\d)-(\\\\d\\\\d)", "2019-02-01")', ["2019", "02", "01"]),
    ('regex("^(?:(?P<scheme>[^:/?#]+):)?(?://(?P<authority>[^/?#]*))?", "https://terraform.io/docs/")',
     {"authority": "terraform.io", "scheme": "https"}),
    ('regexall("[a-z]+", "1234abcd5678efgh9")', ["abcd", "efgh"]),
    ('length(regexall("[a-z]+", "1234abcd5678efgh9"))', 2), ('length(regexall("[a-z]+", "123456789")) > 0', False),
    ('split(",", "foo,bar,baz")', ["foo", "bar", "baz"]), ('split(",", "foo")', ["foo"]), ('split(",", "")', [""]),
    ('strrev("hello")', "olleh"), ('strrev("a ☃")', "☃ a"),
    ('substr("hello world", 1, 4)', "ello"), ('substr("🤔🤷", 0, 1)', "🤔"), ('substr("hello world", -5, -1)', "world"),
    ('substr("hello", 1, 100)', "ello"),
    ('title("hello world")', "Hello World"),
    ('trim("?!hello?!", "!?")', "hello"), ('trim("  hello! world.!  ", "! ")', "hello! world."),
    ('trimprefix("helloworld", "hello")', "world"), ('trimprefix("helloworld", "cat")', "helloworld"),
    ('trimsuffix("helloworld", "world")', "hello"), ('trimspace("  hello\\n\\n")', "hello"),
    ('startswith("hello world", "hello")', True), ('startswith("hello world", "world")', False),
    ('endswith("hello world", "world")', True), ('strcontains("hello world", "wor")', True),
    ('strcontains("hello world", "cat")', False),
    # collection
    ('chunklist(["a", "b", "c", "d", "e"], 2)', [["a", "b"], ["c", "d"], ["e"]]),
    ('chunklist(["a", "b", "c", "d", "e"], 1)', [["a"], ["b"], ["c"], ["d"], ["e"]]),
    ('coalesce("a", "b")', "a"), ('coalesce("", "b")', "b"), ("coalesce(1, 2)", 1), ('coalesce(null, "x")', "x"),
    ('coalescelist(["a", "b"], ["c", "d"])', ["a", "b"]), ('coalescelist([], ["c", "d"])', ["c", "d"]),
    ('compact(["a", "", "b", null, "c"])', ["a", "b", "c"]),
    ('concat(["a", ""], ["b", "c"])', ["a", "", "b", "c"]),
    ('contains(["a", "b", "c"], "a")', True), ('contains(["a", "b", "c"], "d")', False),
    ('distinct(["a", "b", "a", "c", "d", "b"])', ["a", "b", "c", "d"]),
    ('element(["a", "b", "c"], 1)', "b"), ('element(["a", "b", "c"], 3)', "a"),
    ('element(["a", "b", "c"], length(["a", "b", "c"])-1)', "c"),
    ('flatten([["a", "b"], [], ["c"]])', ["a", "b", "c"]), ('flatten([[["a", "b"], []], ["c"]])', ["a", "b", "c"]),
    ('index(["a", "b", "c"], "b")', 1),
    ("keys({a=1, c=2, d=3})", ["a", "c", "d"]), ("values({a=3, c=2, d=1})", [3, 2, 1]),
    ('length("👾🕹️")', 2), ('strrev("e\u0301a")', "ae\u0301"), ('substr("e\u0301a", 1, 1)', "a"),
    ("length([])", 0), ('length(["a", "b"])', 2), ('length({"a" = "b"})', 1), ('length("hello")', 5),
    ('lookup({a="ay", b="bee"}, "a", "what?")', "ay"), ('lookup({a="ay", b="bee"}, "c", "what?")', "what?"),
    ('merge({a="b", c="d"}, {e="f", c="z"})', {"a": "b", "c": "z", "e": "f"}),
    ('merge({a="b"}, {a=[1,2], c="z"}, {d=3})', {"a": [1, 2], "c": "z", "d": 3}),
    ("range(3)", [0, 1, 2]), ("range(1, 4)", [1, 2, 3]), ("range(1, 8, 2)", [1, 3, 5, 7]),
    ("range(1, 4, 0.5)", [1, 1.5, 2, 2.5, 3, 3.5]), ("range(4, 1)", [4, 3, 2]), ("range(10, 5, -2)", [10, 8, 6]),
    ("range(0)", []),
    ("reverse([1, 2, 3])", [3, 2, 1]),
    ('setintersection(["a", "b"], ["b", "c"], ["b", "d"])', ["b"]),
    ('setproduct(["development", "staging"], ["app1", "app2"])',
     [["development", "app1"], ["development", "app2"], ["staging", "app1"], ["staging", "app2"]]),
    ('setunion(["a", "b"], ["b", "c"], ["d"])', ["a", "b", "c", "d"]),
    ('slice(["a", "b", "c", "d"], 1, 3)', ["b", "c"]),
    ('sort(["e", "d", "a", "x"])', ["a", "d", "e", "x"]),
    ('zipmap(["a", "b"], [1, 2])', {"a": 1, "b": 2}),
    ('alltrue(["true", true])', True), ("alltrue([true, false])", False), ("alltrue([])", True),
    ('anytrue(["true"])', True), ("anytrue([true, false])", True), ("anytrue([])", False),
    # type conversion
    ("tobool(true)", True), ('tobool("true")', True), ("tobool(null)", None),
    ("tonumber(1)", 1), ('tonumber("1")', 1), ("tonumber(null)", None),
    ('tostring("hello")', "hello"), ("tostring(1)", "1"), ("tostring(true)", "true"), ("tostring(null)", None),
    ('tolist(["a", "b", "c"])', ["a", "b", "c"]), ('tolist(["a", "b", 3])', ["a", "b", "3"]),
    ('toset(["a", "b", "c"])', ["a", "b", "c"]), ('toset(["c", "b", "b"])', ["b", "c"]),
    ('toset(["a", "b", 3])', ["3", "a", "b"]),
    ('tomap({"a" = 1, "b" = 2})', {"a": 1, "b": 2}), ('tomap({"a" = "foo", "b" = true})', {"a": "foo", "b": "true"}),
    ('convert({"a" = 1}, map(string))', {"a": "1"}), ('convert(["1", "2"], list(number))', [1, 2]),
    ('try(tonumber("x"), 5)', 5), ('can(tonumber("x"))', False), ('can(tonumber("2"))', True),
    # encoding
    ('base64encode("Hello World")', "SGVsbG8gV29ybGQ="), ('base64decode("SGVsbG8gV29ybGQ=")', "Hello World"),
    ('textencodebase64("Hello World", "UTF-16LE")', "SABlAGwAbABvACAAVwBvAHIAbABkAA=="),
    ('textdecodebase64("SABlAGwAbABvACAAVwBvAHIAbABkAA==", "UTF-16LE")', "Hello World"),
    ('csvdecode("a,b,c\\n1,2,3\\n4,5,6")', [{"a": "1", "b": "2", "c": "3"}, {"a": "4", "b": "5", "c": "6"}]),
    ('jsondecode("{\\"hello\\": \\"world\\"}")', {"hello": "world"}), ('jsondecode("true")', True),
    ('jsonencode({"hello"="world"})', '{"hello":"world"}'),
    ('jsonencode(["<a>", 1.5, null])', '["\\u003ca\\u003e",1.5,null]'),
    ('urlencode("Hello World!")', "Hello+World%21"), ('urlencode("3 + 4")', "3+%2B+4"),
    ('urlencode("foo:bar@localhost?foo=bar&bar=baz")', "foo%3Abar%40localhost%3Ffoo%3Dbar%26bar%3Dbaz"),
    ('yamldecode("hello: world")', {"hello": "world"}), ('yamldecode("true")', True),
    ('yamldecode("{a: &foo [1, 2, 3], b: *foo}")', {"a": [1, 2, 3], "b": [1, 2, 3]}),
    ('yamlencode({"a" = "b", "c" = "d"})', '"a": "b"\n"c": "d"\n'),
    ('yamlencode({"foo" = [1, 2, 3], "bar" = "baz"})', '"bar": "baz"\n"foo":\n- 1\n- 2\n- 3\n'),
    # filesystem (paths are relative to the working directory, as in Packer)
    ('basename("foo/bar/baz.txt")', "baz.txt"), ('basename("/")', "/"), ('dirname("foo/bar/baz.txt")', "foo/bar"),
    ('dirname("baz.txt")', "."), ('pathexpand("~/.ssh/id_rsa")', os.path.expanduser("~/.ssh/id_rsa")),
    ('pathexpand("/etc/resolv.conf")', "/etc/resolv.conf"), ('abspath("/x/../y")', "/y"),
    # date and time
    ('formatdate("DD MMM YYYY hh:mm ZZZ", "2018-01-02T23:12:01Z")', "02 Jan 2018 23:12 UTC"),
    ('formatdate("EEEE, DD-MMM-YY hh:mm:ss ZZZ", "2018-01-02T23:12:01Z")', "Tuesday, 02-Jan-18 23:12:01 UTC"),
    ('formatdate("EEE, DD MMM YYYY hh:mm:ss ZZZ", "2018-01-02T23:12:01-08:00")', "Tue, 02 Jan 2018 23:12:01 -0800"),
    ('formatdate("MMM DD, YYYY", "2018-01-02T23:12:01Z")', "Jan 02, 2018"),
    ('formatdate("HH:mmaa", "2018-01-02T23:12:01Z")', "11:12pm"),
    ("formatdate(\"h 'o''clock'\", \"2018-01-02T11:12:01Z\")", "11 o'clock"),
    ('timeadd("2017-11-22T00:00:00Z", "10m")', "2017-11-22T00:10:00Z"),
    ('timeadd("2017-11-22T00:00:00Z", "-1h30m")', "2017-11-21T22:30:00Z"),
    ("timestamp()", "2024-01-02T03:04:05Z"),
    ('legacy_isotime("2006-01-02")', "2024-01-02"), ("legacy_isotime()", "2024-01-02T03:04:05Z"),
    ('legacy_strftime("%Y-%m-%d")', "2024-01-02"),
    # crypto
    ('md5("hello world")', "5eb63bbbe01eeed093cb22bb8f5acdc3"),
    ('sha1("hello world")', "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed"),
    ('sha256("hello world")', "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"),
    ('sha512("hello world")', "309ecc489c12d6eb4cc40f50c902f2b4d0ed77ee511a7c7a9bcd3ca86d4cd86f989dd35bc5ff499670da"
                               "34255b45b0cfd830e81f605dcf7dc5542e93ae9cd76f"),
    ('uuidv5("dns", "www.terraform.io")', "a5008fae-b28c-5ba5-96cd-82b4c53552d6"),
    ('uuidv5("url", "https://www.terraform.io/")', "9db6f67c-dd95-5ea0-aa5b-e70e5c5f7cf5"),
    ('uuidv5("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "www.terraform.io")', "a5008fae-b28c-5ba5-96cd-82b4c53552d6"),
    ("length(uuidv4())", 36),
    ('base64sha256("hello world")', "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="),
    ('base64sha512("hello world")',
     "MJ7MSJwS1utMxA9QyQLytNDtd+5RGnx6m808qG1M2G+YndNbxf9JlnDaNCVbRbDP2DDoH2Bdz33FVC6TrpzXbw=="),
    ('startswith(base64gzip("hello"), "H4sI")', True),  # the gzip magic, base64
    ('matchkeys(["i-123", "i-abc", "i-def"], ["us-west", "us-east", "us-east"], ["us-east"])', ["i-abc", "i-def"]),
    # network
    ('cidrhost("10.12.112.0/20", 16)', "10.12.112.16"), ('cidrhost("10.12.112.0/20", 268)', "10.12.113.12"),
    ('cidrhost("10.12.112.0/20", -1)', "10.12.127.255"),
    ('cidrhost("fd00:fd12:3456:7890:00a2::/72", 34)', "fd00:fd12:3456:7890::22"),
    ('cidrnetmask("172.16.0.0/12")', "255.240.0.0"),
    ('cidrsubnet("172.16.0.0/12", 4, 2)', "172.18.0.0/16"), ('cidrsubnet("10.1.2.0/24", 4, 15)', "10.1.2.240/28"),
    ('cidrsubnet("fd00:fd12:3456:7890::/56", 16, 162)', "fd00:fd12:3456:7800:a200::/72"),
    ('cidrsubnets("10.1.0.0/16", 4, 4, 8, 4)', ["10.1.0.0/20", "10.1.16.0/20", "10.1.32.0/24", "10.1.48.0/20"]),
    ('cidrsubnets("fd00:fd12:3456:7890::/56", 16, 16, 16, 32)',
     ["fd00:fd12:3456:7800::/72", "fd00:fd12:3456:7800:100::/72", "fd00:fd12:3456:7800:200::/72",
      "fd00:fd12:3456:7800:300::/88"]),
]


@pytest.mark.parametrize(("expr", "expected"), OK)
def test_function(expr: str, expected: Any) -> None:
    assert call(expr) == expected


ERRORS: list[tuple[str, str]] = [
    ('abs("x")', 'a number is required, but "x" is not a valid number'),
    ('parseint("12", 2)', 'cannot parse "12" as a base 2 integer'),
    ('parseint("1", 1)', "base must be a whole number between 2 and 62 inclusive"),
    ("sum([])", "cannot sum an empty list"),
    ('regex("[a-z]+", "53453453")', "pattern did not match any part of the given string"),
    ('substr("hello", 10, 1)', "offset is out of range"),
    ('coalesce("", null)', "no non-null, non-empty-string arguments"),
    ("element([], 0)", "cannot use element function with an empty list"),
    ('index(["a"], "z")', "item not found"),
    ('lookup({a = 1}, "b")', 'the given object has no attribute "b"'),
    ("range(1, 4, 0)", "step must not be zero"),
    ('slice(["a"], 0, 2)', "end index must not be greater than the length of the list"),
    ('zipmap(["a"], [])', "number of keys (1) does not match number of values (0)"),
    ('tobool("no")', 'cannot convert "no" to bool; only the strings "true" or "false" are allowed'),
    ('tonumber("no")', 'cannot convert "no" to number; given string must be a decimal representation of a number'),
    ("tostring([])", "cannot convert tuple to string"),
    ('base64decode("!!")', "failed to decode base64 data"),
    ('jsondecode("{")', "invalid JSON"),
    ('textencodebase64("x", "NOPE-42")', '"NOPE-42" is not a supported IANA encoding name or alias'),
    ('file("/nonexistent/file.txt")', "no file exists at /nonexistent/file.txt"),
    ('formatdate("Q", "2018-01-02T23:12:01Z")', 'invalid date format verb "Q"'),
    ('formatdate("YYYY", "2018-01-02")', "not a valid RFC3339 timestamp"),
    ('timeadd("2017-11-22T00:00:00Z", "10x")', 'time: invalid duration "10x"'),
    ('cidrsubnet("10.0.0.0/30", 4, 0)', "insufficient address space to extend prefix of 30 by 4"),
    ('cidrhost("10.0.0.0/30", 4)', "prefix of 30 does not accommodate a host numbered 4"),
    ('cidrnetmask("fd00::/8")', "only IPv4 networks are supported"),
    ('uuidv5("nope", "x")', "uuidv5() doesn't support namespace nope"),
    ('bcrypt("x", 3)', "cost 3 is outside allowed range (4,31)"),
    ('env("HOME")', "env vars are not allowed here"),
    ('vault("/secret/data/x", "k")', "vault: not configured: set VAULT_ADDR"),
    ('consul_key("a/b")', "consul_key: not configured: set CONSUL_HTTP_ADDR"),
    ('try(tonumber("x"), tonumber("y"))', "no expression succeeded"),
]


@pytest.mark.parametrize(("expr", "message"), ERRORS)
def test_function_errors(expr: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    with pytest.raises(HCLError) as e:
        call(expr)
    text = str(e.value)
    assert text.startswith(("Error: Invalid function argument", "Error: Error in function call")), text
    assert message in text, text


def test_env_in_variable_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCL2_TEST_VALUE", "from-env")
    assert call('env("HCL2_TEST_VALUE")', env_allowed=True) == "from-env"
    assert call('env("HCL2_TEST_UNSET_VALUE")', env_allowed=True) == ""


def test_files_and_templatefile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_text("A")
    (tmp_path / "files" / "b.txt").write_text("B")
    (tmp_path / "files" / "c.sh").write_text("C")
    (tmp_path / "t.pkrtpl.hcl").write_text("hello ${name}\n%{ for x in items ~}\n- ${upper(x)}\n%{ endfor ~}\n")
    assert call('file("files/a.txt")') == "A"
    assert call('fileexists("files/a.txt")') is True and call('fileexists("files/z.txt")') is False
    assert call('fileset("files", "*.txt")') == ["a.txt", "b.txt"]
    assert call('filemd5("files/a.txt")') == "7fc56270e7a70fa81a5935b72eacbe29"
    assert call('filesha256("files/a.txt")') == call('sha256("A")')
    assert call('filebase64sha256("files/a.txt")') == call('base64sha256("A")')
    assert call('templatefile("t.pkrtpl.hcl", { name = "world", items = ["a", "b"] })') == "hello world\n- A\n- B\n"
    with pytest.raises(HCLError) as e:
        call('fileexists("files")')
    assert "files is not a regular file, but directory" in str(e.value)


def test_bcrypt_and_rsadecrypt() -> None:
    import bcrypt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    hashed = call('bcrypt("hello world")')
    assert hashed.startswith("$2a$10$") and bcrypt.checkpw(b"hello world", hashed.encode())
    assert call('bcrypt("x", 5)').startswith("$2a$05$")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()).decode()
    cipher = base64.b64encode(key.public_key().encrypt(b"secret text", padding.PKCS1v15())).decode()
    pem_expr = pem.replace("\n", "\\n")
    assert call(f'rsadecrypt("{cipher}", "{pem_expr}")') == "secret text"


def test_aws_secretsmanager_against_moto(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    sm = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_endpoint)
    sm.create_secret(Name="packer/test", SecretString='{"user": "admin", "port": 22}')
    sm.create_secret(Name="packer/raw", SecretString="just text")
    assert call('aws_secretsmanager("packer/test", "user")') == "admin"
    assert call('aws_secretsmanager("packer/test", "port")') == "22"
    assert call('aws_secretsmanager_raw("packer/raw")') == "just text"
    with pytest.raises(HCLError) as e:
        call('aws_secretsmanager("packer/missing", "user")')
    assert "error retrieving secret packer/missing" in str(e.value)
