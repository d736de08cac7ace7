#!/usr/bin/env python3
"""AMI fan-out: a whole ``amazon-ebs`` build copying the AMI to 16 regions versus to 1, against a moto server on
127.0.0.1 (target <= 2x: the copies, their waits and the per-region tagging run in parallel).

moto copies an AMI instantly, so this measures orchestration: the builder's steps (source AMI, temporary key pair
and security group, instance, create_image, copies, attributes, tags in every region, cleanup of the temporaries)
with a client per region, the bounded pool, the polling and the retries wrapper -- plus moto's own per-request
work, which grows with the number of regions (every region costs a CopyImage, DescribeImages polls, CreateTags
and ModifyImageAttribute calls: 16x the requests). moto runs as a separate ``moto_server`` process (as a real
endpoint would be: not sharing this process's interpreter lock) and every region's moto backend is warmed up before
timing (moto loads its default AMIs per region on first use; that is moto's start-up, not ours).

Two scenarios, each with its own PASS/MISS (house style of ``bench_fanout.py``):

* ``loopback``: straight to moto. Every API call is answered in a few milliseconds, so the run is CPU-bound: this
  process (a botocore client per region, request signing and parsing) and moto (16x the requests) share this
  machine's cores. It shows the cost per region, not the parallelism.
* ``api latency``: the same through a loopback proxy that holds every request ``--latency-ms`` (default 100 ms,
  a typical EC2 API round trip to a remote region) before forwarding it. This is what the fan-out is for: serial
  copying would take ~16x the per-region round trips; the parallel fan-out should stay near 1x.

Each round runs both variants, the order alternating, each with a fresh AMI name; the AMIs (and snapshots) are
destroyed between runs, untimed. Reported: median and best whole-build seconds, the ratio of medians, and the
fan-out steps alone (ami-region-copy + modify-ami-attributes + create-tags) from the step runner's records.

Run: ``.venv/bin/python benchmarks/bench_ami_fanout.py [--rounds 5] [--regions 16] [--latency-ms 100]``;
``--quick`` for the smoke test (2 rounds, 4 regions). Exit status 0 unless a build failed (2) or, with
``--strict``, a target was missed (1). The moto process is stopped at the end whatever happens. All traffic stays
on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builders.builder_types.amazon_ebs import AmazonEbsBuilder  # noqa: E402
from builders.core import BuildContext  # noqa: E402
from builders.registry import validate_options  # noqa: E402
from stemforge_base.steps import StepRunner  # noqa: E402

TARGET_RATIO = 2.0
BUILD_REGION = "us-east-1"
REGIONS = [
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "sa-east-1",
    "ap-east-1",
    "me-south-1",
    "af-south-1",
    "eu-south-1",
]
FANOUT_STEPS = ("ami_region_copy", "modify_ami_attributes", "create_tags")


class QuietUi:
    def say(self, message: str) -> None:
        pass

    def message(self, message: str) -> None:
        pass

    def error(self, message: str) -> None:
        print(f"  error: {message}", file=sys.stderr)

    def progress(self, label: str, done: int, total: int | None) -> None:
        pass


class NoProvisioners:
    def run(self, communicator: Any) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoProcess:
    """``moto_server`` on 127.0.0.1 in its own process; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        binary = Path(sys.executable).with_name("moto_server")
        args = [str(binary)] if binary.exists() else [sys.executable, "-m", "moto.server"]
        self.proc = subprocess.Popen(
            [*args, "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def __enter__(self) -> MotoProcess:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto_server exited") from None
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def __exit__(self, *_exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class LatencyProxy:
    """A loopback HTTP proxy that holds every request ``delay`` seconds before forwarding it to ``port``."""

    def __init__(self, port: int, delay: float) -> None:
        upstream = ("127.0.0.1", port)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(delay)
                conn = http.client.HTTPConnection(*upstream, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")}
                    headers["Host"] = f"127.0.0.1:{port}"
                    conn.request("POST", self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LatencyProxy:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def warm(endpoint: str, regions: list[str]) -> float:
    import boto3

    started = time.monotonic()
    session = boto3.session.Session()
    clients = {
        r: session.client(
            "ec2", region_name=r, endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench-secret"
        )
        for r in regions
    }
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda r: clients[r].describe_vpcs(), regions))
    return time.monotonic() - started


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of this process (all threads) or of ``pid`` (from /proc)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


MOTO_PID: int | None = None


def build(endpoint: str, regions: list[str], work: Path) -> tuple[float, float, dict[str, str], float, float]:
    """One whole amazon-ebs build; (seconds, fan-out steps seconds, amis, this process's CPU seconds, moto's CPU
    seconds) -- the CPU measured over the timed build only."""
    ctx = BuildContext("bench", "amazon-ebs", QuietUi(), threading.Event(), work, str(uuid.uuid4()))
    config = {
        "region": BUILD_REGION,
        "custom_endpoint_ec2": endpoint,
        "access_key": "bench",
        "secret_key": "bench-secret",
        "source_ami_filter": {"filters": {"name": "ubuntu/images/*"}, "owners": ["099720109477"], "most_recent": True},
        "instance_type": "t3.micro",
        "communicator": "none",
        "ami_name": f"bench-{uuid.uuid4().hex[:12]}",
        "ami_regions": regions,
        "tags": {"Name": "bench", "Region": "{{ .BuildRegion }}"},
        "snapshot_tags": {"kind": "root"},
        "ami_users": ["111122223333"],
        "aws_polling": {"delay_seconds": 1},
    }
    builder = AmazonEbsBuilder(validate_options(AmazonEbsBuilder, config, "amazon-ebs"), ctx)
    builder.prepare()
    runner = StepRunner(log=logging.getLogger("bench"), cancel=ctx.cancel)
    state: dict[str, Any] = {}
    cpu0, moto0 = cpu_seconds(), cpu_seconds(MOTO_PID) if MOTO_PID else 0.0
    started = time.monotonic()
    runner.run(builder.steps(NoProvisioners()), state)
    seconds = time.monotonic() - started
    cpu, moto_cpu = cpu_seconds() - cpu0, (cpu_seconds(MOTO_PID) - moto0) if MOTO_PID else 0.0
    artifact = builder.artifact(state)
    if artifact is None:
        raise RuntimeError("the build made no AMI")
    fanout = sum(r.seconds for r in runner.records if r.name in FANOUT_STEPS)
    amis = dict(artifact.state["amis"])
    artifact.destroy()
    return seconds, fanout, amis, cpu, moto_cpu


def scenario(endpoint: str, regions: list[str], rounds: int, work: Path, label: str) -> dict[str, Any]:
    one: list[tuple[float, float, float, float]] = []
    many: list[tuple[float, float, float, float]] = []
    build(endpoint, regions[:1], work)  # warm-up: client creation paths, moto's first instance/AMI
    for i in range(rounds):
        order = [(1, one), (len(regions), many)]
        for count, sink in order if i % 2 == 0 else reversed(order):
            seconds, fanout, amis, cpu, moto_cpu = build(endpoint, regions[:count], work)
            if len(amis) != count + 1:
                raise RuntimeError(f"expected {count + 1} AMIs, got {len(amis)}")
            sink.append((seconds, fanout, cpu, moto_cpu))
        print(
            f"{label} round {i + 1}: 1 region {one[-1][0]:.2f}s (fan-out {one[-1][1]:.2f}s), {len(regions)} "
            f"regions {many[-1][0]:.2f}s (fan-out {many[-1][1]:.2f}s)"
        )

    def med(rows: list[tuple[float, float, float, float]], i: int) -> float:
        return statistics.median(row[i] for row in rows)

    return {
        "label": label,
        "t1": med(one, 0),
        "tn": med(many, 0),
        "f1": med(one, 1),
        "fn": med(many, 1),
        "c1": med(one, 2),
        "cn": med(many, 2),
        "m1": med(one, 3),
        "mn": med(many, 3),
        "b1": min(row[0] for row in one),
        "bn": min(row[0] for row in many),
    }


def run(args: argparse.Namespace) -> int:
    regions = REGIONS[: args.regions]
    work = Path(os.environ.get("TMPDIR", "/tmp"))
    results = []
    global MOTO_PID
    with MotoProcess() as moto:
        MOTO_PID = moto.proc.pid
        warmed = warm(moto.url, [BUILD_REGION, *regions])
        print(
            f"moto_server on {moto.url}; {len(regions) + 1} region backends warmed in {warmed:.1f}s; "
            f"cores: {os.cpu_count()}; load: {os.getloadavg()[0]:.2f}"
        )
        results.append(scenario(moto.url, regions, args.rounds, work, "loopback"))
        with LatencyProxy(moto.port, args.latency_ms / 1000) as proxy:
            results.append(scenario(proxy.url, regions, args.rounds, work, f"api latency {args.latency_ms:g} ms"))
    print(
        f"\n=== bench_ami_fanout summary ({len(regions)} regions vs 1, {args.rounds} rounds, medians; target <= "
        f"{TARGET_RATIO:.0f}x; load {os.getloadavg()[0]:.2f}) ==="
    )
    print(f"{'scenario':<22}{'what':<30}{'1 region':>10}{f'{len(regions)} regions':>12}{'ratio':>8}  verdict")
    missed = False
    for r in results:
        ratio = r["tn"] / r["t1"]
        verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
        missed |= verdict == "MISS"
        print(
            f"{r['label']:<22}{'whole amazon-ebs build':<30}{r['t1']:>9.2f}s{r['tn']:>11.2f}s{ratio:>7.2f}x  {verdict}"
        )
        print(
            f"{'':<22}{'fan-out steps':<30}{r['f1']:>9.2f}s{r['fn']:>11.2f}s{r['fn'] / r['f1']:>7.2f}x  "
            f"(serial would be ~{len(regions) * r['f1']:.1f}s)"
        )
        print(f"{'':<22}{'best whole build':<30}{r['b1']:>9.2f}s{r['bn']:>11.2f}s")
        print(
            f"{'':<22}{'CPU: this process':<30}{r['c1']:>9.2f}s{r['cn']:>11.2f}s  "
            f"(+{(r['cn'] - r['c1']) / max(1, len(regions) - 1) * 1000:.0f} ms per extra region)"
        )
        print(
            f"{'':<22}{'CPU: moto_server':<30}{r['m1']:>9.2f}s{r['mn']:>11.2f}s  "
            f"(+{(r['mn'] - r['m1']) / max(1, len(regions) - 1) * 1000:.0f} ms per extra region)"
        )
    return 1 if missed and args.strict else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--regions", type=int, default=16, choices=range(1, len(REGIONS) + 1), metavar="N")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="simulated EC2 API round trip")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 4 regions (smoke test)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.regions = 2, 4
    try:
        return run(args)
    except Exception as exc:  # noqa: BLE001 - a failed build is a benchmark failure, reported plainly
        print(f"bench_ami_fanout: build failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
