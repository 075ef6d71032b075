"""Benchmark: time from a label key press to the next image shown, in a real browser against `cxr-al serve`.

    .venv/bin/python bench/bench_label_latency.py                  # 50 labels, optional panels off
    .venv/bin/python bench/bench_label_latency.py --labels 100 --panels prediction,neighbours

A phantom project (full-size 512 px images, a queue of suggestions) is served on a free local port the
way `cxr-al serve` does; headless Debian Chromium (Playwright) signs in, switches the optional panels
off (or on, as asked), then presses a class key per image. Each latency runs from just before the key
press to the moment the page shows a different image id with its pixels decoded (measured from Python,
so it includes a few milliseconds of Playwright round trip). Every label is then checked in the
database. Prints median and p95; full numbers go to bench/results/label_latency.json.
Target (issue 5): p95 under 300 ms on the development machine with the optional panels off.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "ui")]

PANELS = {"prediction": "Model prediction", "overlay": "Grad-CAM++ overlay", "neighbours": "Similar labeled images",
          "details": "Image details"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


def train_model(project, n_labels: int) -> None:
    """Pretrain briefly, embed every image, label n_labels pool images outside the queue from the
    hidden ground truth, and run a probe round: the prediction, overlay and neighbour panels then have
    real work to do."""
    from active.engine.rounds import embed, pretrain, train

    # two SimCLR steps: enough for a backbone checkpoint, so the probe round's model can be explained
    pretrain(project, method="simclr", epochs=1, max_steps=2, batch_size=16, in_child=False, progress=False)
    embed(project, in_child=False, progress=False)
    oracle = project.db.oracle_labels().set_index("image_id")["label"]
    queued = set(project.db.open_queue()["image_id"])
    pool = [int(i) for i in project.db.images("pool")["id"] if int(i) not in queued]
    by_class = [[i for i in pool if oracle.loc[i] == c] for c in project.classes]
    chosen = [ids[k] for k in range(n_labels) for ids in by_class if k < len(ids)][:n_labels]  # round robin
    for image_id in chosen:
        project.db.add_label(image_id, oracle.loc[image_id], "lena", source="cli")
    train(project, mode="probe", in_child=False, progress=False, n_bootstrap=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3, help="labels before timing starts (not counted)")
    parser.add_argument("--panels", default="", help=f"panels to switch on: {','.join(PANELS)} (default: none)")
    parser.add_argument("--size", type=int, default=512, help="phantom image side in pixels")
    parser.add_argument("--with-model", action="store_true",
                        help="embed the pool and train a probe round first, so the panels have a model and an index")
    parser.add_argument("--think-ms", type=int, default=0,
                        help="time the annotator looks at each image before pressing (background work can run)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "label_latency.json")
    args = parser.parse_args()
    wanted = {p for p in args.panels.split(",") if p}
    if wanted - set(PANELS):
        parser.error(f"unknown panels {sorted(wanted - set(PANELS))}")

    from browser_steps import press, shown_image_id, sign_in, wait_for_other_image
    from conftest import CHROMIUM, CHROMIUM_ARGS, PASSWORDS, make_labeling_project
    from playwright.sync_api import sync_playwright

    from active.delivery.serve import free_port, start_server, wait_until_ready

    n = args.labels + args.warmup
    with tempfile.TemporaryDirectory(prefix="cxr-al-latency-") as tmp:
        extra = 24 if args.with_model else 0  # labeled outside the queue, to train the model the panels show
        project = make_labeling_project(Path(tmp), n=int((n + extra) / 0.8) + 8, size=args.size, queued=n)
        if args.with_model:
            train_model(project, extra)
        port = free_port()
        proc = start_server(project.root, port=port, log=Path(tmp) / "server.log")
        url = f"http://127.0.0.1:{port}"
        latencies: list[float] = []
        try:
            wait_until_ready(url, proc, timeout=90)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
                page = browser.new_context(viewport={"width": 1400, "height": 950}).new_page()
                page.set_default_timeout(30_000)
                sign_in(page, url, "alice", PASSWORDS["alice"])
                image_id = shown_image_id(page)
                for key, label in PANELS.items():
                    toggle = page.get_by_label(label, exact=True)
                    if toggle.is_checked() != (key in wanted):
                        page.get_by_text(label, exact=True).click()
                        page.wait_for_timeout(300)
                image_id = shown_image_id(page)
                classes = project.classes
                for k in range(n):
                    if args.think_ms:
                        page.wait_for_timeout(args.think_ms)
                    t0 = time.perf_counter()
                    press(page, str(k % len(classes) + 1))
                    image_id = wait_for_other_image(page, image_id)
                    if k >= args.warmup:
                        latencies.append((time.perf_counter() - t0) * 1000)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        labels = project.db.current_labels()
        mine = labels[labels["annotator"] == "alice"]
        assert len(mine) == n, "labels missing in the database"

    result = {"labels": len(latencies), "panels": sorted(wanted), "image_size": args.size, "with_model": args.with_model,
              "think_ms": args.think_ms,
              "median_ms": statistics.median(latencies), "p95_ms": percentile(latencies, 95),
              "max_ms": max(latencies), "latencies_ms": latencies,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_avg": os.getloadavg()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'labels':>8} {'panels':>24} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    print(f"{result['labels']:>8} {','.join(result['panels']) or 'off':>24} {result['median_ms']:>10.0f} "
          f"{result['p95_ms']:>8.0f} {result['max_ms']:>8.0f}")
    print(f"target p95 < 300 ms: {'met' if result['p95_ms'] < 300 else 'NOT met'}; full numbers in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
