"""The S/MIME line of the encrypted-intake benchmark: S/MIME referrals (signed and encrypted by a partner)
per second through the gateway, against bare `openssl cms -decrypt` + `openssl cms -verify` of the same messages.

    .venv/bin/python bench/smime_line.py [--messages 1000] [--concurrency 16] [--cipher aes256]
    .venv/bin/python bench/encrypted_intake.py --smime ...   (this line first, then the OpenPGP run)

1. keys, with the openssl command line: a throwaway CA, the partner's certificate (RSA-2048, emailProtection)
   and the gateway's (RSA-3072, as `keys init` makes it), both issued by the CA;
2. messages, before any timing: the OpenPGP run's referral forms (3-6 KB), each signed by the partner as its
   mail client would (`openssl smime -sign -md sha256`, multipart/signed) and encrypted to the gateway
   (`openssl smime -encrypt -aes256`: RSA PKCS#1 v1.5 key transport, AES-256-CBC; the gateway opens that in
   process; --cipher aes-256-gcm makes `openssl cms` AuthEnvelopedData, which it leaves to openssl);
3. the baseline, before and after the gateway: a process of its own (this script with --baseline-worker) runs,
   for every message, the two openssl commands the gateway's SMime runs (the same arguments, the content in a
   0700 temp dir), 2 messages at a time as the gateway's SMime(concurrency=2) does, like the gpg baseline;
4. decrypt only, in this process: SMime.decrypt over the same messages as the gateway runs it (in process
   where it can) and with SMime(in_process=False) (openssl for all), 2 at a time: what the in-process path saves;
5. the gateway: `python -m gateway serve` with [keys] smime_key/smime_cert, the partner's CA as its
   smime_anchors, [security] require_encryption/require_signature; warm-up first, then the burst over
   --concurrency connections, timed from the first send to the last alert row seen committed.

It prints the rates, `smime ratio: X.XX` (the gateway's burst rate over the baselines' mean) and CPU seconds per
referral (own utime+stime; openssl children waited for, cutime+cstime).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import common

SCRIPT = Path(__file__).resolve()
PARTNER = "Demo NHS Trust"
THREADS = 2  # the gateway's SMime(concurrency=2): openssl runs (and in-process decrypts) at once


def openssl(*args: str, stdin: bytes = b"") -> bytes:
    done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])}: {done.stderr.decode(errors='replace')[-400:]}")
    return done.stdout


@dataclass
class Pki:
    ca: Path
    partner_key: Path
    partner_cert: Path
    gateway_key: Path
    gateway_cert: Path


def make_pki(work: Path, gateway_keys: Path) -> Pki:
    """A throwaway CA, and the partner's and the gateway's certificates it issues (openssl req/x509)."""
    pki = work / "pki"
    pki.mkdir()
    ca_key, ca = pki / "ca.key", pki / "ca.pem"
    openssl("req", "-x509", "-newkey", "rsa:3072", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
            "-subj", "/CN=Bench Trust CA", "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip

    def issue(name: str, bits: int, email: str, where: Path) -> tuple[Path, Path]:
        key, csr, cert, ext = where / f"{name}.key.pem", pki / f"{name}.csr", where / f"{name}.crt.pem", pki / name
        subject = ("-subj", f"/CN={name}")
        openssl("req", "-newkey", f"rsa:{bits}", "-nodes", "-keyout", str(key), "-out", str(csr), *subject)
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=emailProtection\nsubjectKeyIdentifier=hash\nsubjectAltName=email:{email}\n"
        )
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                "-out", str(cert), "-days", "30", "-extfile", str(ext))  # fmt: skip
        key.chmod(0o600)  # the gateway refuses a key others can read
        return key, cert

    gateway_keys.mkdir(parents=True, exist_ok=True)
    partner_key, partner_cert = issue("partner", 2048, common.SENDER, pki)
    gateway_key, gateway_cert = issue("gateway", 3072, common.RECIPIENT, gateway_keys)
    return Pki(ca, partner_key, partner_cert, gateway_key, gateway_cert)


@dataclass
class Built:
    raw: bytes  # the whole message as sent over SMTP
    der: bytes  # the enveloped data: what `openssl cms -decrypt` is given, in the gateway and the baseline
    content: bytes  # the signed part, as cut from the decrypted multipart/signed: `-content`
    signature: bytes  # its detached signature (DER)


def build_messages(pki: Pki, count: int, seed: int, jobs: int, cipher: str) -> list[Built]:
    from encrypted_intake import inner_entity

    from tests.test_smime import cut_signed, pkcs7_body

    rng = random.Random(seed)
    run = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
    entities = [inner_entity(rng) for _ in range(count)]
    sign = ("smime", "-sign", "-md", "sha256", "-signer", str(pki.partner_cert), "-inkey", str(pki.partner_key))
    # openssl smime cannot make AuthEnvelopedData; openssl cms can (application/pkcs7-mime).
    tool = "cms" if "gcm" in cipher else "smime"

    def one(index: int) -> Built:
        signed = openssl(*sign, stdin=entities[index])
        encrypted = openssl(tool, "-encrypt", f"-{cipher}", str(pki.gateway_cert), stdin=signed)
        head = (
            f"From: Ann Example <{common.SENDER}>\r\nTo: {common.RECIPIENT}\r\nSubject: Safeguarding referral\r\n"
            f"Message-ID: <bench-{run}-{index}@nhs.example>\r\nMIME-Version: 1.0\r\n"
        )
        content, signature = cut_signed(signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        return Built(head.encode() + encrypted, pkcs7_body(encrypted), content, signature)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, range(count)))


def gateway_extra(home: Path) -> str:
    return (
        "[security]\nrequire_encryption = true\nrequire_signature = true\n\n"
        '[keys]\nsmime_key = "smime/gateway.key.pem"\nsmime_cert = "smime/gateway.crt.pem"\n\n'
        f'[[partners]]\nname = "{PARTNER}"\naddresses = ["@nhs.example"]\nsmime_anchors = ["{home}/pki/ca.pem"]\n'
    )


# --------------------------------------------------------------------------- the baseline


def baseline_worker(blobs: Path, key: Path, cert: Path, ca: Path, warmup: int) -> None:
    """In a process of its own: the gateway's two openssl commands for every message, THREADS at a time."""
    items = json.loads(blobs.read_text())
    data = [(bytes.fromhex(i["der"]), bytes.fromhex(i["content"]), bytes.fromhex(i["signature"])) for i in items]
    decrypt = ["openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-inkey", str(key), "-recip", str(cert)]

    def one(item: tuple[bytes, bytes, bytes]) -> tuple[bool, float]:
        der, content, signature = item
        start = time.perf_counter()
        opened = subprocess.run(decrypt, input=der, capture_output=True, check=False)
        with tempfile.TemporaryDirectory(prefix="smime-") as tmp:  # as SMime._private_dir: mode 0700
            (Path(tmp) / "content").write_bytes(content)
            verify = ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-content", f"{tmp}/content",
                      "-signer", f"{tmp}/signer.pem", "-no-CApath", "-no-CAstore",
                      "-CAfile", str(ca), "-purpose", "smimesign"]  # fmt: skip
            checked = subprocess.run(verify, input=signature, capture_output=True, check=False)
        good = opened.returncode == 0 and content in opened.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return good and checked.returncode == 0, time.perf_counter() - start

    for item in data[:warmup]:
        one(item)
    self0, child0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(one, data[warmup:]))
    seconds = time.perf_counter() - start
    self1, child1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "count": len(results), "good": sum(ok for ok, _ in results), "seconds": seconds,
        "cpu_self": self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime,
        "cpu_children": child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime,
    }), flush=True)  # fmt: skip


@dataclass
class Run:
    name: str
    count: int
    good: int
    seconds: float
    cpu_self: float
    cpu_children: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


async def run_baseline(name: str, work: Path, pki: Pki, built: Sequence[Built], warmup: int) -> Run:
    blobs = work / "smime-blobs.json"
    blobs.write_text(json.dumps([{"der": b.der.hex(), "content": b.content.hex(), "signature": b.signature.hex()}
                                 for b in built]))  # fmt: skip
    argv = [common.python(), str(SCRIPT), "--baseline-worker", str(blobs), str(pki.gateway_key),
            str(pki.gateway_cert), str(pki.ca), str(warmup)]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=common.ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"S/MIME baseline worker failed: {err.decode(errors='replace')[-2000:]}")
    return Run(name, **json.loads(out.decode().strip().splitlines()[-1]))


async def decrypt_only(pki: Pki, built: Sequence[Built], in_process: bool) -> Run:
    """SMime.decrypt of every message, THREADS at a time, in this process (its CPU: getrusage)."""
    from gateway.open.crypto.smime import SMime

    smime = SMime(pki.gateway_key, pki.gateway_cert, concurrency=THREADS, in_process=in_process)
    await smime.decrypt(built[0].der)  # reads the key (in process: once per file version)
    self0, child0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    opened = await asyncio.gather(*(smime.decrypt(b.der) for b in built))
    seconds = time.perf_counter() - start
    self1, child1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    good = sum(1 for b, o in zip(built, opened, strict=True) if b.content in o)
    name = "decrypt, SMime default" if in_process else "decrypt, openssl only"
    cpu_self = self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime
    return Run(name, len(built), good, seconds, cpu_self, child1.ru_utime + child1.ru_stime - child0.ru_utime
               - child0.ru_stime)  # fmt: skip


# --------------------------------------------------------------------------- the gateway


async def run_gateway(work: Path, home: Path, built: Sequence[Built], warmup: int, concurrency: int,
                      limit: float) -> tuple[Run, dict[str, int]]:  # fmt: skip
    from encrypted_intake import Watcher, connect_all, db_counts, gateway_phase, send_burst, wait_outbox

    config = common.write_config(home, gateway_extra(work))
    gw = common.gateway_server(config, work / "smime-gateway.log")
    await gw.start()
    watcher = Watcher(home / "var" / "gateway.db", gw.pid)
    watcher.start()
    clients = []
    try:
        clients = await connect_all(gw.port, min(concurrency, len(built) - warmup))
        warm = await send_burst(clients, [b.raw for b in built[:warmup]])
        if not await watcher.wait_for([s.reference for s in warm.sent], limit):
            raise RuntimeError("the S/MIME warm-up referrals were not processed; see smime-gateway.log")
        await wait_outbox(home / "var" / "gateway.db", limit)
        timed = [b.raw for b in built[warmup:]]
        phase = await gateway_phase("gateway burst", gw, watcher, None, lambda: send_burst(clients, timed), limit)
        states, _ = db_counts(home / "var" / "gateway.db", [s.reference for s in phase.sending.sent])
    finally:
        for client in clients:
            await client.close()
        await watcher.stop()
        await gw.stop()
    common.print_log_errors(work / "smime-gateway.log")
    routed = sum(n for state, n in states.items() if state != "quarantined") if phase.complete else 0
    return Run("gateway burst", phase.count, routed, phase.seconds, phase.cpu_self, phase.cpu_children), states


# --------------------------------------------------------------------------- main


async def measure(messages: int, concurrency: int, warmup: int = 16, seed: int = 1, cipher: str = "aes256",
                  build_jobs: int = 4, limit: float = 300.0, keep: bool = False) -> float:  # fmt: skip
    """The whole S/MIME line; prints its report and returns the ratio (0 when anything failed)."""
    work = Path(tempfile.mkdtemp(prefix="smime-bench-"))
    home = work / "gw"
    try:
        pki = make_pki(work, home / "keys" / "smime")
        print(f"S/MIME: building {warmup + messages} referrals ({cipher}), {build_jobs} at a time...", flush=True)
        started = time.perf_counter()
        built = build_messages(pki, warmup + messages, seed, build_jobs, cipher)
        build_seconds = time.perf_counter() - started
        timed = built[warmup:]
        runs = [await run_baseline("baseline 1 (openssl)", work, pki, built, warmup)]
        print(f"S/MIME baseline 1: {runs[-1].rate:.1f} messages/s", flush=True)
        runs += [await decrypt_only(pki, timed, True), await decrypt_only(pki, timed, False)]
        gateway, states = await run_gateway(work, home, built, warmup, concurrency, limit)
        print(f"S/MIME gateway burst: {gateway.rate:.1f} referrals/s", flush=True)
        runs += [gateway, await run_baseline("baseline 2 (openssl)", work, pki, built, warmup)]
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return print_report(runs, states, built[warmup:], build_seconds, concurrency)


def print_report(runs: Sequence[Run], states: dict[str, int], timed: Sequence[Built], build_seconds: float,
                 concurrency: int) -> float:  # fmt: skip
    from cryptography import __version__ as cryptography_version

    from gateway.open.crypto.smime_inprocess import route

    version = openssl("version").decode().strip()
    plan = route(timed[0].der)
    sizes = [len(b.raw) for b in timed]
    print()
    print(
        f"referral-gateway encrypted intake, S/MIME: {len(timed)} referrals signed (RSA-2048, SHA-256) and encrypted"
        f" to the gateway's RSA-3072 certificate; built in {build_seconds:.1f} s; the gateway decrypts them"
        f" {'in process' if plan.in_process else 'through openssl'} ({plan.why})"
    )
    print(
        f"  message size mean {sum(sizes) / len(sizes):,.0f} bytes; {version}; cryptography {cryptography_version};"
        f" {os.cpu_count()} CPUs; {THREADS} at a time (baselines), {concurrency} SMTP connections (gateway)"
    )
    print(f"{'run':<24} {'count':>5} {'good':>5} {'seconds':>8} {'per s':>7}   CPU s each: own  children  total")
    for r in runs:
        n = r.count or 1
        own, children = r.cpu_self / n, max(0.0, r.cpu_children) / n
        print(
            f"{r.name:<24} {r.count:>5} {r.good:>5} {r.seconds:>8.2f} {r.rate:>7.1f}"
            f"   {'':>11}{own:>7.4f} {children:>8.4f} {own + children:>6.4f}"
        )
    baselines = [r for r in runs if r.name.startswith("baseline")]
    base_rate = sum(r.rate for r in baselines) / len(baselines)
    [gateway] = [r for r in runs if r.name == "gateway burst"]
    ratio = gateway.rate / base_rate if base_rate else 0.0
    in_process, via_openssl = runs[1], runs[2]
    speedup = in_process.rate / via_openssl.rate if via_openssl.rate else 0.0
    print(
        f"decrypt only (SMime.decrypt, {THREADS} at a time): default {in_process.rate:.1f}/s, "
        f"in_process=False {via_openssl.rate:.1f}/s ({speedup:.1f}x)"
    )
    print("referral states: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    cpu = (gateway.cpu_self + gateway.cpu_children) / (gateway.count or 1)
    print(
        f"smime: gateway {gateway.rate:.1f} ref/s, baseline {base_rate:.1f} msg/s (mean of 2), "
        f"gateway CPU {cpu * 1000:.1f} ms per referral"
    )
    print(f"smime ratio: {ratio:.2f}")
    ok = all(r.good == r.count for r in runs) and states.get("quarantined", 0) == 0
    return ratio if ok else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=1000, help="referrals in the burst (default 1000)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent SMTP connections (default 16)")
    p.add_argument("--warmup", type=int, default=16, help="untimed warm-up referrals (default 16)")
    p.add_argument("--cipher", default="aes256", choices=("aes256", "aes128", "aes-256-gcm"), help="content cipher")
    p.add_argument("--build-jobs", type=int, default=4, help="messages built at a time (default 4)")
    p.add_argument("--seed", type=int, default=1, help="random seed for message contents")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (gateway home, database, log)")
    p.add_argument("--baseline-worker", nargs=5, metavar="ARG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.baseline_worker is not None:
        blobs, key, cert, ca, warmup = args.baseline_worker
        baseline_worker(Path(blobs), Path(key), Path(cert), Path(ca), int(warmup))
        return 0
    return common.run_main(line(args.messages, args.concurrency, args.warmup, args.seed, args.build_jobs, args.keep,
                                args.cipher))  # fmt: skip


async def line(messages: int, concurrency: int, warmup: int, seed: int, build_jobs: int, keep: bool,
               cipher: str = "aes256") -> int:  # fmt: skip
    """The exit status: 0 when every message was opened and verified and no referral was quarantined."""
    ratio = await measure(messages, concurrency, warmup, seed, cipher, build_jobs, keep=keep)
    return 0 if ratio else 1


if __name__ == "__main__":
    sys.exit(main())
