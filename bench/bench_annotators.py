"""Benchmark: K annotators labeling at once against one `cxr-al serve` (issue 13, load).

    .venv/bin/python bench/bench_annotators.py --annotators 8 --labels 20
    .venv/bin/python bench/bench_annotators.py --annotators 1,4,8 --think-ms 2000

A phantom project (512 px images, a queue of suggestions) is served the way `cxr-al serve` does. Each
annotator is its own process (its own headless Chromium, in its own process group, so the browsers' CPU is
never counted as the server's): it signs in, waits at a barrier until every annotator shows an image, then
presses a class key per image, waiting `--think-ms` before each (a reader looks at the image first; each look
varies by +-`--think-jitter`, as readers do not press in lockstep; `--think-jitter 0` is the lockstep worst case).
Latency: key press to a different image shown with its pixels decoded. Server CPU: user + system time of
the server process (and its children) over the labeling window, divided by the labels saved. RSS: the
server's resident memory before the browsers start, at the end of labeling, and after every browser has
closed and Streamlit's disconnected-session TTL has passed. Every label is checked in the database, and no
queue entry stays claimed by an annotator whose browser is gone (after the session expiry the server
returns claims to the queue). Full numbers go to bench/results/annotators.json.
Targets (issue 13): p95 under 1 s and server CPU per label under 0.1 s with eight annotators.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "ui")]

PASSWORD = "annotator-secret-1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


def cpu_seconds(pid: int, waited_children: bool = True) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat fields 14-15), with those of its waited-for children
    (fields 16-17) unless told not to."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15 if waited_children else 13]) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live descendants: an annotator's Python, Playwright's
    driver and Chromium's processes (Chromium starts its own process group, so the tree is followed, not the
    group); processes that already exited are not counted."""
    total = 0.0
    for p in descendants(pid):
        try:
            total += cpu_seconds(p, waited_children=False)
        except OSError:
            continue  # exited meanwhile
    return total


def reference_cpu_s() -> float:
    """CPU seconds of a fixed workload (SHA-256 of 64 MiB and two million Python loop steps): how fast this
    machine is right now, so runs on a shared or throttled machine can be compared (lower is faster)."""
    import hashlib

    started = time.process_time()
    hashlib.sha256(bytes(64 << 20)).hexdigest()
    total = 0
    for i in range(2_000_000):
        total += i & 7
    return time.process_time() - started


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def descendants(pid: int) -> list[int]:
    """A process and all its descendants, from /proc."""
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        found = []
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                found += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
        pids += found
        frontier += found
    return pids


def server_pids(proc: subprocess.Popen) -> list[int]:
    """The server process and its descendants (serve may run Streamlit as a child)."""
    return descendants(proc.pid)


def worker(args: argparse.Namespace) -> int:
    """One annotator: sign in, wait for the go file, label, print latencies as JSON."""
    from browser_steps import press, shown_image_id, sign_in, sign_out, wait_for_other_image
    from conftest import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    latencies: list[float] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_context(viewport={"width": 1400, "height": 950}).new_page()
        page.set_default_timeout(120_000)
        sign_in(page, args.url, args.user, PASSWORD)
        image_id = shown_image_id(page)
        Path(args.ready).touch()
        while not Path(args.go).exists():
            time.sleep(0.05)
        client_cpu0 = tree_cpu_seconds(os.getpid())
        rng = random.Random(args.user)  # each reader's own pace, the same in every run
        for k in range(args.labels):
            if args.think_ms:
                page.wait_for_timeout(args.think_ms * rng.uniform(1 - args.think_jitter, 1 + args.think_jitter))
            t0 = time.perf_counter()
            press(page, str(k % args.n_classes + 1))
            image_id = wait_for_other_image(page, image_id)
            latencies.append((time.perf_counter() - t0) * 1000)
        client_cpu = tree_cpu_seconds(os.getpid()) - client_cpu0
        if args.sign_out:
            sign_out(page)
        browser.close()
    print(json.dumps({"user": args.user, "latencies_ms": latencies, "client_cpu_s": client_cpu}))
    return 0


def run_wave(k: int, wave: int, args: argparse.Namespace, project, url: str, proc: subprocess.Popen,
             tmp_path: Path) -> dict:
    """K annotators (new accounts) label at once against the running server; returns the wave's numbers."""
    from active.views.accounts import add_user

    users = [f"reader{wave + 1}x{j + 1}" for j in range(k)]
    for user in users:
        add_user(project, user, "annotator", PASSWORD)
    go = tmp_path / f"go{wave}"
    workers: list[subprocess.Popen] = []
    try:
        for user in users:
            cmd = [sys.executable, __file__, "--worker", "--url", url, "--user", user,
                   "--labels", str(args.labels), "--think-ms", str(args.think_ms),
                   "--think-jitter", str(args.think_jitter),
                   "--n-classes", str(len(project.classes)), "--ready", str(tmp_path / f"{user}.ready"),
                   "--go", str(go)] + (["--sign-out"] if args.sign_out else [])
            workers.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True,
                                            env={**os.environ, "OMP_NUM_THREADS": "1"}))
        deadline = time.monotonic() + 300
        while not all((tmp_path / f"{u}.ready").exists() for u in users):
            if time.monotonic() > deadline or any(w.poll() not in (None, 0) for w in workers):
                raise RuntimeError("an annotator could not sign in; see the server log " + str(tmp_path))
            time.sleep(0.1)
        pids = server_pids(proc)
        spy = None
        if args.py_spy and wave == 0:  # where the server's CPU goes, as collapsed stacks (flame-graph input)
            spy = subprocess.Popen([args.py_spy, "record", "--pid", str(proc.pid), "--subprocesses", "--format", "raw",
                                    "--rate", "50", "-o", str(args.out.with_suffix(f".k{k}.stacks"))],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        cpu0, t0 = sum(cpu_seconds(p) for p in pids), time.perf_counter()
        go.touch()
        outputs = [w.communicate(timeout=1800)[0] for w in workers]
        wall = time.perf_counter() - t0
        pids = server_pids(proc)
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        rss_end = sum(rss_mb(p) for p in pids)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        time.sleep(args.settle_s)  # sessions of closed browsers are dropped after Streamlit's TTL
        rss_after = sum(rss_mb(p) for p in server_pids(proc))
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
    per_user = [json.loads(line) for out in outputs for line in out.splitlines() if line.startswith("{")]
    latencies = [v for u in per_user for v in u["latencies_ms"]]
    client_cpu = sum(u["client_cpu_s"] for u in per_user)
    labels = project.db.current_labels()
    saved = int(labels["annotator"].isin(users).sum())
    assert saved == k * args.labels, f"{saved} labels saved, {k * args.labels} pressed"
    queue = project.db.open_queue()
    still_claimed = int(queue["annotator"].isin(users).sum()) if not queue.empty else 0
    return {"annotators": k, "wave": wave + 1, "labels": len(latencies), "think_ms": args.think_ms,
            "think_jitter": args.think_jitter if args.think_ms else 0.0,
            "image_size": args.size, "median_ms": statistics.median(latencies),
            "p95_ms": percentile(latencies, 95), "max_ms": max(latencies), "server_cpu_s": cpu,
            "server_cpu_per_label_s": cpu / max(1, saved),
            "client_cpu_per_label_s": client_cpu / max(1, saved), "wall_s": wall, "labels_per_s": saved / wall,
            "rss_end_mb": rss_end, "rss_after_close_mb": rss_after, "claims_left_after_close": still_claimed,
            "latencies_ms": latencies}


def run_level(k: int, args: argparse.Namespace) -> list[dict]:
    """`--waves` waves of K annotators at once, one fresh project and server; the numbers of each wave."""
    from conftest import make_labeling_project

    from active.delivery.serve import free_port, start_server, wait_until_ready

    with tempfile.TemporaryDirectory(prefix="cxr-al-annotators-") as tmp:
        tmp_path = Path(tmp)
        n_images = args.waves * k * (args.labels + 4)
        project = make_labeling_project(tmp_path, n=int(n_images / 0.8) + 8, size=args.size, queued=n_images)
        port = free_port()
        proc = start_server(project.root, port=port, log=tmp_path / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(url, proc, timeout=90)
            rss_start = sum(rss_mb(p) for p in server_pids(proc))
            waves = [run_wave(k, w, args, project, url, proc, tmp_path) for w in range(args.waves)]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    for wave in waves:
        wave["rss_start_mb"] = rss_start
    return waves


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", default="8", help="comma-separated numbers of annotators, one run each")
    parser.add_argument("--labels", type=int, default=20, help="labels per annotator")
    parser.add_argument("--think-ms", type=int, default=0, help="time each annotator looks before pressing")
    parser.add_argument("--think-jitter", type=float, default=0.5,
                        help="each look lasts think-ms times a uniform draw in [1 - j, 1 + j] (0: all in lockstep)")
    parser.add_argument("--size", type=int, default=512, help="phantom image side in pixels")
    parser.add_argument("--settle-s", type=float, default=5.0, help="wait after the browsers close before RSS")
    parser.add_argument("--waves", type=int, default=1,
                        help="waves of K new annotators against the same server (RSS after many sessions)")
    parser.add_argument("--sign-out", action="store_true", help="each annotator signs out when done")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "annotators.json")
    parser.add_argument("--py-spy", default=None, help="path of a py-spy binary: record the server's stacks")
    # worker mode (one annotator), started by the benchmark itself
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    parser.add_argument("--n-classes", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    levels = [int(v) for v in args.annotators.split(",")]
    reference_before = reference_cpu_s()
    results = [wave for k in levels for wave in run_level(k, args)]
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "load_avg": os.getloadavg(), "reference_cpu_s": [reference_before, reference_cpu_s()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "machine": machine}, indent=2))
    print(f"{'K':>3} {'wave':>4} {'think ms':>12} {'labels':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'CPU s/label':>12} {'client s/label':>15} {'labels/s':>9} "
          f"{'RSS MB start/end/after':>24} {'claims left':>12}")
    for r in results:
        think = f"{r['think_ms']}+-{r['think_jitter']:.0%}" if r["think_ms"] else "0"
        print(f"{r['annotators']:>3} {r['wave']:>4} {think:>12} {r['labels']:>7} {r['median_ms']:>8.0f} {r['p95_ms']:>8.0f} {r['max_ms']:>8.0f} "
              f"{r['server_cpu_per_label_s']:>12.3f} {r['client_cpu_per_label_s']:>15.3f} {r['labels_per_s']:>9.2f} "
              f"{r['rss_start_mb']:>8.0f}/{r['rss_end_mb']:.0f}/{r['rss_after_close_mb']:.0f} "
              f"{r['claims_left_after_close']:>12}")
    eight = [r for r in results if r["annotators"] >= 8]
    for r in eight:
        ok = r["p95_ms"] < 1000 and r["server_cpu_per_label_s"] < 0.1
        print(f"K={r['annotators']}: targets p95 < 1000 ms and CPU/label < 0.1 s {'met' if ok else 'NOT met'}")
    print(f"machine reference workload: {machine['reference_cpu_s'][0]:.2f} s before, "
          f"{machine['reference_cpu_s'][1]:.2f} s after (lower is faster)")
    print(f"full numbers in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
