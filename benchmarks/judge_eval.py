"""Agreement of every saferegx judge with held-out labels: refusal match, the embedded critic,
LMJudge on SmolLM2 and the response judge (saferegx.eval.judge.compare_judges, the same table as
`saferegx judge eval`).

    .venv/bin/python benchmarks/judge_eval.py                 # print the Markdown tables
    .venv/bin/python benchmarks/judge_eval.py --write         # and append them to RESULTS.md
    .venv/bin/python benchmarks/judge_eval.py --judges refusal,judge

The first run fits the response judge (cached) and LMJudge reads every test pair with the
embedded model: minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from saferegx.eval.judge import JUDGES, agreement_markdown, compare_judges


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--judges", default=",".join(JUDGES), help=f"comma-separated subset of {', '.join(JUDGES)} (default: all)"
    )
    ap.add_argument("--seed", type=int, default=0, help="split and bootstrap seed")
    ap.add_argument("--write", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = ap.parse_args()
    judges = [j.strip() for j in args.judges.split(",") if j.strip()]
    if args.write:
        from _common import append_results, machine

        where = machine()  # its load average is the one at the start
    start = time.perf_counter()
    table = agreement_markdown(compare_judges(args.seed, judges))
    took = time.perf_counter() - start
    print(table)
    print(f"\n({took:.0f} s)")
    if args.write:
        command = "python benchmarks/judge_eval.py " + shlex.join(sys.argv[1:])
        append_results(
            "Judge agreement with held-out labels", command.strip(), where, f"{table}\n\nWall time {took:.0f} s."
        )


if __name__ == "__main__":
    main()
