"""``saferegx judge score | eval``: the response judge on a file, and every judge against labels.

``judge score FILE.jsonl`` reads one ``{"prompt": ..., "response": ...}`` object per line and
prints, for each line and in order, ``{"harmful": 0 or 1, "score": float}``. ``judge eval``
prints the agreement table of docs/judge.md (``benchmarks/judge_eval.py`` prints the same).
Bad input (a missing file, a line that is not JSON, a missing or non-string field, a blank line)
ends with one line ``saferegx judge score: error: FILE:LINE: ...`` on stderr and exit code 2,
before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..usage import UsageError


def add_parser(sub) -> None:
    """Register ``judge score`` and ``judge eval`` under the top-level subparsers."""
    judge = sub.add_parser(
        "judge",
        help="score responses with the response judge, or compare judges",
        description="The response-reading judge: did a response take a harmful request up? (docs/judge.md)",
    )
    cmds = judge.add_subparsers(dest="judge_command", required=True)
    score = cmds.add_parser(
        "score",
        help='one {"harmful", "score"} JSON line per input line',
        description='Score each line of a JSONL file of {"prompt", '
        '"response"} objects; prints one JSON line per input '
        "line, in order. The first run fits the judge (a minute "
        "or more) and caches it.",
    )
    score.add_argument("file", type=Path, help="JSONL file, or - for standard input")
    score.add_argument(
        "--threshold", type=float, default=None, help="harmful when score > this (default: the judge's, 0.5)"
    )
    score.add_argument("--seed", type=int, default=0, help="the judge's split seed (default 0)")
    ev = cmds.add_parser(
        "eval",
        help="agreement of every judge with held-out labels (Markdown)",
        description="Accuracy, F1 and Cohen's kappa with 95% intervals of "
        "refusal match, the embedded critic, LMJudge on SmolLM2 and "
        "the response judge, on the held-out human labels and the "
        "demo-style labels.",
    )
    ev.add_argument(
        "--judges",
        default="refusal,critic,lm,judge",
        help="comma-separated subset of refusal, critic, lm, judge (default: all)",
    )
    ev.add_argument("--seed", type=int, default=0, help="split and bootstrap seed (default 0)")


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``judge`` command; 0 on success, 2 (message on stderr) on a user error."""
    try:
        if args.judge_command == "score":
            return score(args)
        return evaluate(args)
    except UsageError as e:
        print(f"saferegx judge {args.judge_command}: error: {e}", file=sys.stderr)
        return 2


def read_pairs(path: Path) -> tuple[list[str], list[str]]:
    """Prompts and responses of a JSONL file; ``UsageError`` naming ``FILE:LINE`` otherwise."""
    name = "<stdin>" if str(path) == "-" else str(path)
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{name}: is a folder, not a JSONL file") from None
    except OSError as e:
        raise UsageError(f"{name}: {e.strerror or e}") from None
    prompts, responses = [], []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    for lineno, raw in enumerate(lines, 1):
        where = f"{name}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"{where}: not UTF-8 text ({e.reason})") from None
        if not line.strip():
            raise UsageError(f'{where}: blank line (every line must be a JSON object with "prompt" and "response")')
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise UsageError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for field in ("prompt", "response"):
            if field not in record:
                raise UsageError(f'{where}: missing "{field}"')
            if not isinstance(record[field], str):
                raise UsageError(f'{where}: "{field}" must be a string, got {type(record[field]).__name__}')
        prompts.append(record["prompt"])
        responses.append(record["response"])
    if not prompts:
        raise UsageError(f"{name}: no lines to score")
    return prompts, responses


def score(args: argparse.Namespace) -> int:
    prompts, responses = read_pairs(args.file)  # before the judge: bad input fails fast
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    from .judge import default_judge

    judge = default_judge(args.seed)
    threshold = judge.threshold if args.threshold is None else args.threshold
    scores = judge.score(prompts, responses).tolist()
    out = sys.stdout
    for s in scores:
        out.write(json.dumps({"harmful": int(s > threshold), "score": round(float(s), 6)}) + "\n")
    out.flush()
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from .judge import JUDGES, agreement_markdown, compare_judges

    judges = [j.strip() for j in args.judges.split(",") if j.strip()]
    unknown = [j for j in judges if j not in JUDGES]
    if unknown or not judges:
        raise UsageError(f"--judges: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(JUDGES)}")
    print(agreement_markdown(compare_judges(args.seed, judges)))
    return 0
