"""`python -m active.engine.background PROJECT_DIR [--if-due]`: one training round in a detached process.

Started by active.engine.policy.start_round_in_background (the round policy after a label, Train now), so the
engine, not the CLI, launches it. It runs run_round, the same single-flight path as `cxr-al train`; its job
child dies with it, and a round it leaves running when killed is marked failed by the next reader.
"""

from __future__ import annotations

import argparse
import sys

from active.engine.policy import run_round
from active.engine.rounds import adopt_lock
from store.errors import CxrAlError
from store.project import open_project


def main(argv: list[str] | None = None) -> int:
    """Run one round for the project; exit 0 when it ran or was not needed, 1 when it failed."""
    parser = argparse.ArgumentParser(prog="python -m active.engine.background")
    parser.add_argument("project_dir")
    parser.add_argument("--if-due", action="store_true")
    parser.add_argument("--lock-fd", type=int, default=None, help="the round lock, taken by the parent")
    args = parser.parse_args(argv)
    try:
        project = open_project(args.project_dir)
        if args.lock_fd is not None:
            adopt_lock(project, args.lock_fd)
        outcome = run_round(project, if_due=args.if_due)
    except CxrAlError as exc:
        print(f"cxr-al round: error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"cxr-al round: {outcome.message}" + (f"; queued {outcome.queued} suggestions" if outcome.started else ""),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
