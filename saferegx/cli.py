"""The `saferegx` command line."""
import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saferegx", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the fused op on the embedded model and HarmBench prompts")
    demo.add_argument("--steps", type=int, default=6, help="fine-tuning steps (default 6)")
    from .risk.probe_cli import add_parser as add_probe_parser

    add_probe_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .op_demo import main as demo_main

        demo_main(args.steps)
    elif args.command == "probe":
        from .risk.probe_cli import run as probe_run

        return probe_run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
