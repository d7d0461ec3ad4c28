"""End to end, broker to store: sluice against a bare consumer on the same
topic, interleaved, with CPU per record. Run through scripts/bench-e2e,
which starts the local stack and builds the release binaries.

usage: scripts/bench-e2e [--events N] [--partitions P] [--interval 10s]
                         [--budget BYTES] [--runs 3] [--storage s3|file]
                         [--signed-payload]

The topic (bench.orders.<events>.<partitions>) is produced once and reused.
Each round runs the bare consumer (examples/consume: sluice's librdkafka
settings for the budget, every header and payload touched) and then sluice
(release build, sinks/order_placed.toml with overrides) over the whole
topic; rounds repeat --runs times, so the two alternate.

sluice's steady window runs from its first commit to its first commit after
90 % of the records were consumed: whole checkpoint cycles. Over it:
records/s consumed and committed; CPU µs per committed record (utime+stime
from /proc) of sluice, of each of its threads, of the broker and of moto;
minor faults and context switches per record; the checkpoint duration p50
and p99 (seal → manifest → announce: the latency a commit adds); peak RSS.
The bare consumer's window is its 10th to 90th percentile of records.

moto listens on plain HTTP, where sluice signs object bodies by default;
against AWS (HTTPS) it sends them unsigned. The bench measures the AWS
case (storage.sign_payload = false) unless --signed-payload is given.

Headline: ratio_rate = sluice committed/s ÷ bare records/s and ratio_cpu =
sluice CPU per record ÷ bare CPU per record, medians of the runs.
"""
import argparse
import json
import os
import shutil
import platform
import re
import statistics
import subprocess
import sys
import time
import urllib.request

CACHE = os.environ.get("SLUICE_CACHE", os.path.expanduser("~/.cache/sluice-dev"))
RUN_DIR = os.path.join(CACHE, "run")
TICKS = os.sysconf("SC_CLK_TCK")


def read_pid(name):
    with open(os.path.join(RUN_DIR, name)) as f:
        return int(f.read().strip())


def proc_stat(pid, task=None):
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    with open(path) as f:
        text = f.read()
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): minflt is field 10, utime 14, stime 15.
    return comm, (int(fields[11]) + int(fields[12])) / TICKS, int(fields[7])


def ctx_switches(pid):
    """Voluntary and involuntary context switches of all threads."""
    switches = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                switches += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except FileNotFoundError:
            continue
    return switches


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def threads(pid):
    """CPU seconds per thread name (threads of one name summed)."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            comm, cpu, _ = proc_stat(pid, task)
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = re.sub(r"\d+$", "#", comm)
        out[name] = out.get(name, 0.0) + cpu
    return out


def cpu(pid):
    return proc_stat(pid)[1]


def metrics(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def total(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def quantile(m, name, q):
    buckets = sorted(
        (float(re.search(r'le="([^"]+)"', k).group(1)), v)
        for k, v in m.items() if k.startswith(name + "_bucket"))
    if not buckets or buckets[-1][1] == 0:
        return None
    want = q * buckets[-1][1]
    for le, count in buckets:
        if count >= want:
            return le
    return None


def snapshot(pid, broker, moto, port):
    m = metrics(port)
    comm, sl_cpu, faults = proc_stat(pid)
    return {
        "t": time.monotonic(), "consumed": total(m, "sluice_records_consumed_total"),
        "committed": total(m, "sluice_records_committed_total"), "cpu": sl_cpu,
        "faults": faults, "ctx": ctx_switches(pid), "threads": threads(pid),
        "broker": cpu(broker), "moto": cpu(moto), "metrics": m,
    }


def run_bare(bin_dir, args, broker, moto):
    b0, m0 = cpu(broker), cpu(moto)
    out = subprocess.run(
        [os.path.join(bin_dir, "examples", "consume"), "--topic", args.topic,
         "--budget", str(args.budget)], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    n = args.events
    result["broker_us_per_record"] = (cpu(broker) - b0) * 1e6 / n
    result["moto_us_per_record"] = (cpu(moto) - m0) * 1e6 / n
    return result


def reset_moto():
    """Empties moto and makes the demo bucket and queue again: moto keeps
    every object in memory and slows as they accumulate, so without this
    each sluice run pays for the ones before it."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    urllib.request.urlopen(urllib.request.Request(
        f"{endpoint}/moto-api/reset", data=b"", method="POST"), timeout=30).read()
    subprocess.run([os.path.join(CACHE, "venv", "bin", "python"), "-c",
                    "import boto3; boto3.client('s3').create_bucket(Bucket='sluice-demo'); "
                    "boto3.client('sqs').create_queue(QueueName='sluice-demo-files')"],
                   check=True)


def run_sluice(bin_dir, args, broker, moto, round_no):
    reset_moto()
    port = 20000 + (os.getpid() + round_no) % 10000
    stamp = f"{int(time.time())}-{round_no}"
    if args.storage == "file":
        storage = f"file://{os.path.join(CACHE, 'bench', stamp)}"
    else:
        storage = f"s3://sluice-demo/bench-{stamp}"
    env = dict(os.environ,
               SLUICE_KAFKA__TOPIC=args.topic, SLUICE_KAFKA__GROUP_ID=f"bench-{stamp}",
               SLUICE_STORAGE__URL=storage,
               # File storage leaves moto out altogether: no notifications.
               SLUICE_NOTIFY__QUEUE_URL="" if args.storage == "file" else
               f"{os.environ['AWS_ENDPOINT_URL']}/123456789012/sluice-demo-files",
               SLUICE_METRICS__LISTEN=f"127.0.0.1:{port}",
               SLUICE_CHECKPOINT__INTERVAL=args.interval,
               SLUICE_MEMORY__MAX_BUFFER_BYTES=str(args.budget), SLUICE_LOG="warn",
               SLUICE_STORAGE__SIGN_PAYLOAD=str(args.signed_payload).lower())
    proc = subprocess.Popen([os.path.join(bin_dir, "sluice"), "run", "--config",
                             "sinks/order_placed.toml"], env=env)
    try:
        s0 = None
        while True:
            time.sleep(0.25)
            if proc.poll() is not None:
                sys.exit(f"sluice exited with {proc.returncode}")
            s = snapshot(proc.pid, broker, moto, port)
            if s0 is None:
                if s["committed"] > 0:
                    s0 = s
                continue
            if s["committed"] > s0["committed"] and (
                    s["consumed"] >= 0.9 * args.events or s["committed"] >= args.events):
                s1 = s
                break
        rss = peak_rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=600)  # a slow store (moto at 64 partitions) drains slowly
        if args.storage == "file":
            # Each run writes ~1 GB of Parquet: the disk is not the subject.
            shutil.rmtree(storage[len("file://"):], ignore_errors=True)
    dt = s1["t"] - s0["t"]
    n = s1["committed"] - s0["committed"]
    m = s1["metrics"]
    files = total(m, "sluice_files_committed_total") - total(s0["metrics"],
                                                               "sluice_files_committed_total")
    return {
        "records": n, "seconds": dt,
        "consumed_per_s": (s1["consumed"] - s0["consumed"]) / dt,
        "records_per_s": n / dt,
        "cpu_us_per_record": (s1["cpu"] - s0["cpu"]) * 1e6 / n,
        "threads_us_per_record": {
            k: (v - s0["threads"].get(k, 0.0)) * 1e6 / n for k, v in s1["threads"].items()
            if v - s0["threads"].get(k, 0.0) > 0},
        "faults_per_record": (s1["faults"] - s0["faults"]) / n,
        "ctx_switches_per_record": (s1["ctx"] - s0["ctx"]) / n,
        "broker_us_per_record": (s1["broker"] - s0["broker"]) * 1e6 / n,
        "moto_us_per_record": (s1["moto"] - s0["moto"]) * 1e6 / n,
        # How big the files are, and how many checkpoints the memory
        # budget (not the interval) started.
        "files": files, "rows_per_file": n / files if files else None,
        "bytes_per_row": (total(m, "sluice_bytes_committed_total")
                          - total(s0["metrics"], "sluice_bytes_committed_total")) / n,
        "memory_checkpoints": total(m, "sluice_memory_checkpoints_total")
        - total(s0["metrics"], "sluice_memory_checkpoints_total"),
        # Row groups closed early, in files that stayed open.
        "memory_row_groups": total(m, "sluice_memory_row_groups_total")
        - total(s0["metrics"], "sluice_memory_row_groups_total"),
        "checkpoint_p50_s": quantile(m, "sluice_checkpoint_duration_seconds", 0.5),
        "checkpoint_p99_s": quantile(m, "sluice_checkpoint_duration_seconds", 0.99),
        "peak_rss_bytes": rss,
    }


def spread(values):
    med = statistics.median(values)
    return f"{med:,.2f} (min {min(values):,.2f}, max {max(values):,.2f})"


def environment(args):
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            clock = f.read().strip()
    except OSError:
        clock = "?"
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "cpu": model, "cores": os.cpu_count(), "clocksource": clock,
        "kernel": platform.release(), "loadavg_before": os.getloadavg(),
        "git": sha + ("+dirty" if dirty else ""), "events": args.events,
        "partitions": args.partitions, "interval": args.interval, "budget": args.budget,
        "storage": args.storage, "signed_payload": args.signed_payload, "runs": args.runs,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--interval", default="10s")
    p.add_argument("--budget", type=int, default=256 << 20)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--storage", choices=["s3", "file"], default="s3")
    p.add_argument("--signed-payload", action="store_true",
                   help="sign object bodies, as sluice does over plain HTTP")
    p.add_argument("--bin", required=True)
    p.add_argument("--json", help="also write every run and the summary here")
    args = p.parse_args()
    args.topic = f"bench.orders.{args.events}.{args.partitions}"
    env = environment(args)
    print("environment:", json.dumps(env), flush=True)
    subprocess.run([os.path.join(args.bin, "examples", "produce"), "--topic", args.topic,
                    "--partitions", str(args.partitions), "--count", str(args.events),
                    "--if-missing"], check=True)
    broker, moto = read_pid(f"kafka-{os.environ.get('KAFKA_PORT', '9092')}.pid"), \
        read_pid(f"moto-{os.environ.get('MOTO_PORT', '4566')}.pid")
    bare, sluice = [], []
    for i in range(args.runs):
        b = run_bare(args.bin, args, broker, moto)
        print(f"bare   {i + 1}: {b['records_per_s']:,.0f} records/s, "
              f"{b['cpu_us_per_record']:.2f} µs CPU/record "
              f"(broker {b['broker_us_per_record']:.2f}, moto {b['moto_us_per_record']:.2f})",
              flush=True)
        bare.append(b)
        s = run_sluice(args.bin, args, broker, moto, i)
        top = sorted(s["threads_us_per_record"].items(), key=lambda kv: -kv[1])[:6]
        print(f"sluice {i + 1}: {s['records_per_s']:,.0f} committed/s "
              f"({s['consumed_per_s']:,.0f} consumed/s), {s['cpu_us_per_record']:.2f} µs "
              f"CPU/record (broker {s['broker_us_per_record']:.2f}, moto "
              f"{s['moto_us_per_record']:.2f}); threads "
              + ", ".join(f"{k} {v:.2f}" for k, v in top)
              + f"; {s['faults_per_record']:.3f} faults/record, "
              f"{s['ctx_switches_per_record']:.3f} ctx switches/record; checkpoint p50 "
              f"{s['checkpoint_p50_s']} s p99 {s['checkpoint_p99_s']} s; {s['files']:.0f} "
              f"files of {s['rows_per_file'] or 0:,.0f} rows ({s['bytes_per_row']:.1f} "
              f"bytes/row), {s['memory_checkpoints']:.0f} checkpoints and "
              f"{s['memory_row_groups']:.0f} row groups closed by memory; peak RSS "
              f"{s['peak_rss_bytes'] >> 20} MiB", flush=True)
        sluice.append(s)
    rate_b = statistics.median(b["records_per_s"] for b in bare)
    rate_s = statistics.median(s["records_per_s"] for s in sluice)
    cpu_b = statistics.median(b["cpu_us_per_record"] for b in bare)
    cpu_s = statistics.median(s["cpu_us_per_record"] for s in sluice)
    print("bare records/s:      ", spread([b["records_per_s"] for b in bare]))
    print("sluice committed/s:  ", spread([s["records_per_s"] for s in sluice]))
    print("bare µs CPU/record:  ", spread([b["cpu_us_per_record"] for b in bare]))
    print("sluice µs CPU/record:", spread([s["cpu_us_per_record"] for s in sluice]))
    print(f"ratio_rate = {rate_s / rate_b:.2f}")
    print(f"ratio_cpu = {cpu_s / cpu_b:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "bare": bare, "sluice": sluice,
                       "ratio_rate": rate_s / rate_b, "ratio_cpu": cpu_s / cpu_b}, f, indent=1)


if __name__ == "__main__":
    main()
