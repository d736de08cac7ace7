"""HCL2 templates through the same build model as JSON: a directory of ``*.pkr.hcl`` files with variables,
locals, sources overridden per build, provisioners and post-processor chains; variable precedence; ``-only``/
``-except`` name forms; diagnostics worded as HCL prints them; sensitive values masked; the CLI end to end with
the ``file`` builder (no guests)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builders.template.hcl2 import HCL2Template, HCLError, load_hcl2
from tests.harness.bench import run_benchmark
from tests.harness.builds import stemforge

HERE = Path(__file__).parents[1]  # tests/
DIR = HERE / "templates" / "hcl2" / "dir"



def load(path: Path = DIR, **kwargs: object) -> HCL2Template:
    kwargs.setdefault("environ", {})
    return load_hcl2(path, **kwargs)  # type: ignore[arg-type]


def test_directory_becomes_the_build_model() -> None:
    t = load()
    assert t.format == "hcl2"
    assert t.description == "two flavours of one source"
    # builds are named as plugins see them in Packer's HCL2 mode (the source's name); the full name stays
    assert [(b.name, b.raw_name, b.type) for b in t.builders] == [("small", "images.qemu.small", "qemu"),
                                                                  ("large", "images.qemu.large", "qemu")]
    small, large = (b.config for b in t.builders)
    assert small["vm_name"] == "img-4096-fixed-small.qcow2"
    assert small["memory"] == 1024 and large["memory"] == 4096  # optional() default, lookup by source.name
    assert small["disk_size"] == 4096 and large["disk_size"] == 8192  # the build's override
    assert large["output_directory"] == "output-large"
    assert small["qemuargs"] == [["-serial", "stdio"]]
    assert small["ssh_password"] == "hunter2-root"
    # provisioners run per build: the first for both, the second only for large, the file one except large
    small_provs = t.provisioners_for("small")
    large_provs = t.provisioners_for("large")
    assert [p.type for p in small_provs] == ["shell", "file"]
    assert [p.type for p in large_provs] == ["shell", "shell"]
    assert small_provs[0].config["inline"][0] == "echo building small (qemu) on {{ build `Host` }}"
    assert small_provs[0].config["environment_vars"] == ["TAG_BUILDER=stemforge"]
    assert small_provs[1].config["content"] == "flavour small\nflavour large\nauto=from-auto-file\n"
    assert (large_provs[1].pause_before, large_provs[1].max_retries, large_provs[1].timeout) == (2.0, 3, 300.0)
    chains = t.post_processor_chains_for("large")
    assert [[pp.type for pp in c] for c in chains] == [["checksum", "manifest"]]
    assert chains[0][1].config == {"output": "manifest-large.json", "strip_path": True}


def test_sensitive_variables_locals_and_derived_values_are_masked() -> None:
    t = load()
    text = json.dumps(t.to_dict())
    for secret in ("hunter2-root", "tok-FIXED-42"):
        assert secret not in text
    # a value derived from a sensitive one is masked whole (builders.template.sensitive); its non-sensitive
    # siblings in the same list are not masked
    inline = t.to_dict()["provisioners"][0]["config"]["inline"]
    assert inline == ["echo building small (qemu) on {{ build `Host` }}", "<sensitive>"]
    assert t.mask("the token is tok-FIXED-42") == "the token is <sensitive>"
    assert t.mask("login root:hunter2-root ok") == "login <sensitive> ok"


def test_variable_precedence(tmp_path: Path) -> None:
    (tmp_path / "a.pkrvars.hcl").write_text('from_auto = "file-hcl"\ndisk_size = 100\nundeclared = 1\n')
    (tmp_path / "b.json").write_text(json.dumps({"from_auto": "file-json", "tags": {"team": "x"}}))
    env = {"PKR_VAR_from_auto": "from-env", "PKR_VAR_disk_size": "50", "PKR_VAR_tags": '{ owner = "env" }'}
    # auto file beats env, env beats default
    t = load(environ=env)
    assert t.hcl_variables["from_auto"].value == "from-auto-file"
    assert t.hcl_variables["disk_size"].value == 50
    assert t.hcl_variables["tags"].value == {"owner": "env"}
    # -var-file and -var in command-line order, later wins; HCL and JSON var files
    t = load(environ=env, var_sources=[("var", "from_auto=cli"), ("var-file", str(tmp_path / "a.pkrvars.hcl")),
                                       ("var-file", str(tmp_path / "b.json"))])
    assert t.hcl_variables["from_auto"].value == "file-json"
    assert t.hcl_variables["disk_size"].value == 100
    assert t.hcl_variables["tags"].value == {"team": "x"}
    assert any(d.summary == "Undefined variable" and '"undeclared"' in d.detail for d in t.diagnostics)
    assert t.warnings == []  # printed once, as diagnostics, by the CLI
    t = load(var_sources=[("var-file", str(tmp_path / "b.json")), ("var", "from_auto=cli")])
    assert t.hcl_variables["from_auto"].value == "cli"


def test_only_except_name_forms() -> None:
    t = load()
    names = lambda only, except_=(): [b.name for b in t.select_builders(only, except_)]  # noqa: E731
    assert names(["qemu.small"]) == ["small"]
    assert names(["images.qemu.large"]) == ["large"]
    assert names(["qemu.*"]) == ["small", "large"]
    assert names(["*.qemu.l*"]) == ["large"]
    assert names([], ["qemu.small"]) == ["large"]
    assert names(["amazon-ebs.*"]) == []


@pytest.mark.parametrize(("source", "summary", "detail", "line"), [
    ('source "qemu" "x" {\n  iso_url = "a"\n  bogus_option = 1\n}\nbuild { sources = ["source.qemu.x"] }\n',
     "Unsupported argument", 'An argument named "bogus_option" is not expected here.', 3),
    ('variable "r" {\n  default = "x"\n  validation {\n    condition = length(var.r) > 3\n'
     '    error_message = "The r value must be longer than 3."\n  }\n}\n'
     'source "file" "x" {\n  content = "x"\n  target = "t"\n}\nbuild { sources = ["source.file.x"] }\n',
     "Invalid value for variable", "The r value must be longer than 3.", 4),
    ('source "file" "x" {\n  content = abs("x")\n  target = "t"\n}\nbuild { sources = ["source.file.x"] }\n',
     "Invalid function argument", 'Invalid value for argument 1 of "abs"', 2),
    ('source "file" "x" {\n  content = local.nope\n  target = "t"\n}\nbuild { sources = ["source.file.x"] }\n',
     "Unsupported attribute", 'This object does not have an attribute named "nope".', 2),
    ('source "file" "x" {\n  content = "x"\n  target = "t"\n}\nbuild {\n  sources = ["source.file.y"]\n}\n',
     "Unknown source", "Unknown source file.y", 6),
])
def test_diagnostics_as_hcl_prints_them(tmp_path: Path, source: str, summary: str, detail: str, line: int) -> None:
    path = tmp_path / "t.pkr.hcl"
    path.write_text(source)
    with pytest.raises(HCLError) as e:
        load(path)
    text = str(e.value)
    assert text.startswith(f"Error: {summary}\n"), text
    assert detail in text
    assert f" line {line}" in text
    quoted = source.split("\n")[line - 1]
    assert f"{line:>4}: {quoted}" in text


def test_unknown_plugins_are_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "t.pkr.hcl"
    path.write_text('packer {\n  required_plugins {\n    ansible = {\n      source = "github.com/hashicorp/ansible"\n'
                    '      version = "~> 1"\n    }\n    qemu = {\n      source = "github.com/hashicorp/qemu"\n'
                    '      version = ">= 1"\n    }\n  }\n}\n'
                    'source "file" "x" {\n  content = "x"\n  target = "t"\n}\n'
                    'build {\n  sources = ["source.file.x"]\n'
                    '  provisioner "ansible" {\n    playbook_file = "a.yml"\n  }\n'
                    '  provisioner "ansible" {\n    playbook_file = "b.yml"\n  }\n}\n')
    with pytest.raises(HCLError) as e:
        load(path)
    text = str(e.value)
    assert "Error: Missing plugins" in text
    assert "github.com/hashicorp/ansible ~> 1" in text
    assert "hashicorp/qemu" not in text
    path.write_text(path.read_text().split("packer {")[0] + path.read_text().split("}\n}\n", 1)[1])
    with pytest.raises(HCLError) as e:
        load(path)
    text = str(e.value)
    assert text.count('Error: Unknown provisioner type "ansible"') == 1
    assert 'The provisioner "ansible" is unknown by Packer, and is likely part of a plugin that is not installed.' \
        in text


def test_dynamic_blocks_and_null_data_source(tmp_path: Path) -> None:
    path = tmp_path / "t.pkr.hcl"
    path.write_text('''
locals {
  disks = { data = 10, logs = 20 }
}
data "null" "greeting" {
  input = "hello ${local.disks.data}"
}
source "amazon-ebs" "x" {
  region        = "us-east-1"
  source_ami    = "ami-12345678"
  instance_type = "t3.micro"
  ssh_username  = "admin"
  ami_name      = data.null.greeting.output
  dynamic "launch_block_device_mappings" {
    for_each = local.disks
    iterator = disk
    content {
      device_name = "/dev/sd${substr(disk.key, 0, 1)}"
      volume_size = disk.value
    }
  }
}
build {
  sources = ["source.amazon-ebs.x"]
}
''')
    t = load(path)
    cfg = t.builders[0].config
    assert cfg["ami_name"] == "hello 10"
    assert cfg["launch_block_device_mappings"] == [{"device_name": "/dev/sdd", "volume_size": 10},
                                                   {"device_name": "/dev/sdl", "volume_size": 20}]
    assert (t.builders[0].name, t.builders[0].raw_name) == ("x", "amazon-ebs.x")


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps({"version": "1.2.3", "auth": self.headers.get("X-Token", "")}).encode()
            self.send_response(200 if self.path == "/meta.json" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_data_source_on_loopback(tmp_path: Path, http_server: str) -> None:
    path = tmp_path / "t.pkr.hcl"
    path.write_text(f'''
data "http" "meta" {{
  url = "{http_server}/meta.json"
  request_headers = {{ X-Token = "abc" }}
}}
locals {{
  meta = jsondecode(data.http.meta.body)
}}
source "file" "x" {{
  content = "v=${{local.meta.version}} auth=${{local.meta.auth}} status=${{data.http.meta.status_code}}"
  target  = "out.txt"
}}
build {{ sources = ["source.file.x"] }}
''')
    assert load(path).builders[0].config["content"] == "v=1.2.3 auth=abc status=200"
    path.write_text(path.read_text().replace("/meta.json", "/missing"))
    with pytest.raises(HCLError) as e:
        load(path)
    assert "HTTP request error. Response code: 404" in str(e.value)


def test_amazon_ami_data_source_against_moto(tmp_path: Path, moto_endpoint: str) -> None:
    import boto3

    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_endpoint)
    base = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    reservation = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    iid = reservation["Instances"][0]["InstanceId"]
    ami = ec2.create_image(InstanceId=iid, Name="hcl2-base-20240101")["ImageId"]
    ec2.create_tags(Resources=[ami], Tags=[{"Key": "os", "Value": "debian"}])
    path = tmp_path / "t.pkr.hcl"
    path.write_text(f'''
data "amazon-ami" "base" {{
  region              = "us-east-1"
  custom_endpoint_ec2 = "{moto_endpoint}"
  filters = {{
    name = "hcl2-base-*"
  }}
  owners      = ["self"]
  most_recent = true
}}
source "file" "x" {{
  content = "${{data.amazon-ami.base.id}} ${{data.amazon-ami.base.tags.os}}"
  target  = "out.txt"
}}
build {{ sources = ["source.file.x"] }}
''')
    assert load(path).builders[0].config["content"] == f"{ami} debian"


def test_cli_validate_inspect_build_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "vars.pkr.hcl").write_text('''
variable "greeting" {
  type    = string
  default = "hello"
}
variable "token" {
  type      = string
  default   = "tok-very-secret"
  sensitive = true
}
''')
    (tmp_path / "main.pkr.hcl").write_text(f'''
source "file" "a" {{
  content = "${{var.greeting}} from ${{source.name}}"
  target  = "{tmp_path}/out/${{source.name}}.txt"
}}
build {{
  name = "files"
  sources = ["source.file.a"]
  source "file.a" {{
    name = "b"
  }}
  provisioner "shell-local" {{
    inline = ["echo token=${{var.token}} for ${{source.name}}"]
  }}
  post-processor "manifest" {{
    output = "{tmp_path}/manifest.json"
  }}
}}
''')
    v = stemforge(["validate", "."], tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    assert v.stdout.strip().endswith("The configuration is valid.")
    i = stemforge(["inspect", "-var", "greeting=hi", str(tmp_path)], tmp_path)
    assert i.returncode == 0, i.stdout + i.stderr
    assert "Packer Inspect: HCL2 mode" in i.stdout
    assert 'var.greeting: "hi"' in i.stdout
    assert "var.token: <sensitive>" in i.stdout
    assert "files.file.b" not in i.stdout and "      file.b" in i.stdout
    m = stemforge(["inspect", "-machine-readable", str(tmp_path)], tmp_path)
    assert ",template-builder,file.a,file" in m.stdout
    b = stemforge(["build", "-only", "file.b", "-var", "greeting=hey", "."], tmp_path)
    assert b.returncode == 0, b.stdout + b.stderr
    assert (tmp_path / "out" / "b.txt").read_text() == "hey from b"
    assert not (tmp_path / "out" / "a.txt").exists()
    assert "tok-very-secret" not in b.stdout + b.stderr
    assert "token=<sensitive> for b" in b.stdout
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [x["name"] for x in manifest["builds"]] == ["b"]  # packer_build_name is the source name
    bad = stemforge(["validate", "-var", "nosuch=1", "."], tmp_path)
    assert bad.returncode == 1
    assert "Error: Undefined -var variable" in bad.stdout + bad.stderr


def test_patterns_real_templates_use(tmp_path: Path) -> None:
    """Interpolated and traversal ``sources``, one source in two build blocks, an unused source of a type
    stemforge lacks, ``hcp_packer_registry`` (a warning), nested blocks (object or list by the plugin's schema)."""
    path = tmp_path / "t.pkr.hcl"
    path.write_text('''
variable "builder" {
  type    = string
  default = "amazon-ebs"
}
locals {
  timestamp = regex_replace("2024-01-02T03:04:05Z", "[- TZ:]", "")
}
source "alicloud-ecs" "img" {
  image_name = "never used"
}
source "amazon-ebs" "img" {
  region        = "us-east-1"
  ami_name      = "runner-${local.timestamp}"
  instance_type = "t2.micro"
  ssh_username  = "runner"
  source_ami_filter {
    filters = {
      name = "ubuntu/images/*"
    }
    most_recent = true
    owners      = ["099720109477"]
  }
  launch_block_device_mappings {
    device_name = "/dev/sda1"
    volume_size = 30
  }
}
build {
  name    = "first"
  sources = ["source.${var.builder}.img"]
  hcp_packer_registry {
    bucket_name = "x"
  }
}
build {
  sources = [source.amazon-ebs.img]
  provisioner "shell" {
    inline = ["echo second"]
  }
}
''')
    t = load(path)
    assert [(b.name, b.raw_name) for b in t.builders] == [("first.amazon-ebs.img", "first.amazon-ebs.img"),
                                                          ("amazon-ebs.img", "amazon-ebs.img")]
    # Packer's lenient reference forms: "<type>.<name>" and any first part ("sources." is a common slip)
    lenient = tmp_path / "lenient.pkr.hcl"
    lenient.write_text(_FILE_SOURCE + 'build {\n  name = "a"\n  sources = ["file.x"]\n}\n'
                       'build {\n  name = "b"\n  sources = ["sources.file.x"]\n}\n')
    assert [b.raw_name for b in load(lenient).builders] == ["a.file.x", "b.file.x"]
    cfg = t.builders[0].config
    assert cfg["ami_name"] == "runner-20240102030405"
    assert cfg["source_ami_filter"] == {"filters": {"name": "ubuntu/images/*"}, "most_recent": True,
                                        "owners": ["099720109477"]}
    assert cfg["launch_block_device_mappings"] == [{"device_name": "/dev/sda1", "volume_size": 30}]
    assert [p.type for p in t.provisioners_for("amazon-ebs.img")] == ["shell"]
    assert t.provisioners_for("first.amazon-ebs.img") == []
    assert any(d.render().startswith("Warning: HCP Packer registry not supported") for d in t.diagnostics)
    path.write_text(path.read_text().replace('default = "amazon-ebs"', 'default = "alicloud-ecs"'))
    with pytest.raises(HCLError) as e:
        load(path)
    assert 'Error: Unknown source type "alicloud-ecs"' in str(e.value)


def test_syntax_only_and_hcp_data_sources(tmp_path: Path) -> None:
    path = tmp_path / "t.pkr.hcl"
    path.write_text('''
data "hcp-packer-image" "base" {
  bucket_name = "golden"
}
variable "needed" {
  type = string
}
source "file" "x" {
  content = data.hcp-packer-image.base.id
  target  = "t"
}
build { sources = ["source.file.x"] }
''')
    ok = stemforge(["validate", "-syntax-only", str(path)], tmp_path)
    assert ok.returncode == 0 and "Syntax-only check passed." in ok.stdout
    valid = stemforge(["validate", "-var", "needed=1", str(path)], tmp_path)  # not executed: value unknown
    assert valid.returncode == 0, valid.stdout + valid.stderr
    bad = stemforge(["validate", "-evaluate-datasources", "-var", "needed=1", str(path)], tmp_path)
    assert bad.returncode == 1
    assert "Error: HCP Packer data source not supported" in bad.stdout + bad.stderr
    unset = stemforge(["validate", str(path)], tmp_path)
    assert 'Error: Unset variable' in unset.stdout + unset.stderr and "line 5" in unset.stdout + unset.stderr
    broken = tmp_path / "broken.pkr.hcl"
    broken.write_text('source "file" "x" {\n  content = \n}\n')
    syntax = stemforge(["validate", "-syntax-only", str(broken)], tmp_path)
    assert syntax.returncode == 1
    assert "Error: Invalid HCL syntax" in syntax.stdout + syntax.stderr
    assert "line 2" in syntax.stdout and "Unexpected end of line at column 13" in syntax.stdout


def test_bench_templates_quick(tmp_path: Path) -> None:
    """The benchmark keeps working (its smallest size; the numbers are in benchmarks/README.md)."""
    proc = run_benchmark("bench_templates.py", "--quick", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "=== bench_templates summary" in proc.stdout and "HCL2 / JSON" in proc.stdout


def test_hcl_json_syntax_files(tmp_path: Path) -> None:
    """``*.pkr.json`` (HCL's JSON syntax) in a directory beside ``*.pkr.hcl``: labels as nested keys, arrays of
    blocks keeping order, strings as templates."""
    (tmp_path / "vars.pkr.hcl").write_text('variable "who" {\n  type    = string\n  default = "world"\n}\n')
    (tmp_path / "main.pkr.json").write_text(json.dumps({
        "//": "a comment",
        "locals": {"greeting": "hello ${var.who}"},
        "source": {"file": {"a": {"content": "${local.greeting} from ${source.name}", "target": "out.txt"}}},
        "build": {
            "name": "j",
            "sources": ["source.file.a"],
            "provisioner": [
                {"shell-local": {"inline": ["echo first %{ if var.who == \"world\" }W%{ endif }"]}},
                {"shell-local": {"inline": ["echo second"], "only": ["file.a"]}},
            ],
            "post-processors": [{"post-processor": [{"manifest": {"output": "m.json"}},
                                                    {"checksum": {"checksum_types": ["md5"]}}]}],
        },
    }, indent=2))
    t = load(tmp_path)
    assert [(b.name, b.raw_name) for b in t.builders] == [("a", "j.file.a")]
    assert t.builders[0].config == {"content": "hello world from a", "target": "out.txt"}
    assert [p.config["inline"] for p in t.provisioners_for("a")] == [["echo first W"], ["echo second"]]
    assert [[pp.type for pp in c] for c in t.post_processor_chains_for("a")] == [["manifest", "checksum"]]
    (tmp_path / "main.pkr.json").write_text('{"source": {')
    with pytest.raises(HCLError) as e:
        load(tmp_path)
    assert "Error: Invalid JSON" in str(e.value) and "main.pkr.json line 1" in str(e.value)


def test_a_file_name_derived_from_a_sensitive_value_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.pkr.hcl").write_text('''
variable "token" {
  type      = string
  default   = "tok-12345678"
  sensitive = true
}
source "file" "x" {
  content = "fine"
  target  = "${path.root}/out-${var.token}.txt"
}
build { sources = ["source.file.x"] }
''')
    result = stemforge(["validate", str(tmp_path)], tmp_path)
    assert result.returncode == 1
    text = result.stdout + result.stderr
    assert "target" in text and "derived from a sensitive variable" in text
    assert "tok-12345678" not in text


_FILE_SOURCE = 'source "file" "x" {\n  content = "a"\n  target  = "t"\n}\n'


@pytest.mark.parametrize(("text", "summary"), [
    ('variable {\n}\nbuild {}\n', "Missing name for variable"),
    ('local "a" {\n}\nbuild {}\n', "Missing required argument"),
    ('variable "x" {\n  type = foo\n}\nbuild {}\n', "Invalid type specification"),
    ('variable "v" {\n  type    = number\n  default = "x"\n}\nbuild {}\n', "Invalid default value for variable"),
    ('locals {\n  a = local.b\n  b = local.a\n}\nbuild {}\n', "Cyclic dependency"),
    (_FILE_SOURCE + 'build {\n  sources = "source.file.x"\n}\n', "Incorrect attribute value type"),
    (_FILE_SOURCE + 'build {\n  name    = [1]\n  sources = ["source.file.x"]\n}\n', "Incorrect attribute value type"),
    (_FILE_SOURCE + 'build {\n  sources = ["source.file.x"]\n  provisioner "shell-local" {\n    only   = "x"\n'
     '    inline = ["a"]\n  }\n}\n', "Incorrect attribute value type"),
    (_FILE_SOURCE + 'build {\n  sources = ["source.file.x"]\n  provisioner {\n  }\n}\n',
     "Missing name for provisioner"),
    (_FILE_SOURCE + 'build {\n  sources = ["source.file.x"]\n  provisioner "shell-local" {\n    pause_before = 5\n'
     '    inline = ["a"]\n  }\n}\n', "Invalid duration"),
    ('source "file" "x" {\n  content = 1 / 0\n  target  = "t"\n}\nbuild { sources = ["source.file.x"] }\n',
     "Operation failed"),
    ('source "file" "x" {\n  content = "${var}"\n  target  = "t"\n}\nbuild { sources = ["source.file.x"] }\n',
     "Invalid reference"),
    ('source "file" "x" {\n  content = "%{ if true }x"\n  target  = "t"\n}\nbuild { sources = ["source.file.x"] }\n',
     "Unterminated template directive"),
    ('source "file" "x" {\n  dynamic "d" {\n    for_each = 3\n    content {}\n  }\n  target = "t"\n}\n'
     'build { sources = ["source.file.x"] }\n', "Invalid dynamic for_each value"),
    ('packer {\n  required_version = ">= 99.0"\n}\nbuild {}\n', "Unsupported Packer Core version"),
])
def test_malformed_configurations_are_diagnosed(tmp_path: Path, text: str, summary: str) -> None:
    path = tmp_path / "t.pkr.hcl"
    path.write_text(text)
    with pytest.raises(HCLError) as e:
        load(path)
    assert str(e.value).startswith(f"Error: {summary}\n"), str(e.value)


def test_error_cleanup_provisioner_and_post_processor_meta(tmp_path: Path) -> None:
    path = tmp_path / "t.pkr.hcl"
    path.write_text('''
source "file" "a" {
  content = "a"
  target  = "a.txt"
}
build {
  sources = ["source.file.a"]
  source "file.a" {
    name = "b"
  }
  error-cleanup-provisioner "shell-local" {
    inline = ["echo cleaning ${source.name}"]
  }
  post-processor "manifest" {
    name                = "m"
    only                = ["file.b"]
    keep_input_artifact = true
    output              = "m.json"
  }
}
''')
    t = load(path)
    cleanup = t.error_cleanup_provisioner
    assert cleanup is not None and cleanup.type == "shell-local"
    assert sorted(cleanup.only) == ["a", "b"]
    assert cleanup.config_for("b")["inline"] == ["echo cleaning b"]
    assert cleanup.config_for("a")["inline"] == ["echo cleaning a"]
    assert t.post_processor_chains_for("a") == []
    (pp,) = t.post_processor_chains_for("b")[0]
    assert (pp.name, pp.keep_input_artifact, pp.config) == ("m", True, {"output": "m.json"})
    assert t.post_processor_chains_for("b", except_=["m"]) == []
    with pytest.raises(HCLError) as e:
        load(path, var_sources=[("var-file", str(tmp_path / "missing.pkrvars.hcl"))])
    assert "Failed to read file" in str(e.value) and "missing.pkrvars.hcl" in str(e.value)


def test_validate_leaves_data_sources_unknown_unless_asked(tmp_path: Path) -> None:
    """Packer's ``validate`` does not run data sources (their outputs are unknown; a plugin sees hcl2shim's
    placeholder) unless ``-evaluate-datasources``; ``build`` runs them."""
    (tmp_path / "t.pkr.hcl").write_text('''
data "http" "meta" {
  url = "http://127.0.0.1:9/meta.json"
}
locals {
  version = jsondecode(data.http.meta.body).version
  fixed   = "known"
}
source "file" "x" {
  content = "v=${local.version} ${local.fixed}"
  target  = "out.txt"
}
build { sources = ["source.file.x"] }
''')
    t = load(tmp_path, evaluate_data=False)
    assert t.builders[0].config["content"] == "74D93920-ED26-11E3-AC10-0800200C9A66"
    assert t.hcl_locals["fixed"] == "known"
    ok = stemforge(["validate", str(tmp_path)], tmp_path)
    assert ok.returncode == 0 and "The configuration is valid." in ok.stdout, ok.stdout + ok.stderr
    evaluated = stemforge(["validate", "-evaluate-datasources", str(tmp_path)], tmp_path)
    assert evaluated.returncode == 1
    assert "Error: Data source failed" in evaluated.stdout + evaluated.stderr
    built = stemforge(["build", str(tmp_path)], tmp_path)
    assert built.returncode == 1 and "Error: Data source failed" in built.stdout + built.stderr
