"""The `saferegx` command line."""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saferegx", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="safe reference, probe, attack fine-tune four ways, ASR and "
        "utility report, on the embedded model and HarmBench",
    )
    demo.add_argument(
        "--out",
        default="runs/demo",
        help="output folder (default runs/demo); a rerun reuses the stages already finished there",
    )
    demo.add_argument("--quick", action="store_true", help="small sizes (14 min on 2 cores with bf16 matmuls)")
    demo.add_argument("--seed", type=int, default=0)
    from .audit import add_parser as add_audit_parser
    from .eval.judge_cli import add_parser as add_judge_parser
    from .risk.probe_cli import add_parser as add_probe_parser

    add_probe_parser(sub)
    add_judge_parser(sub)
    add_audit_parser(sub)
    train = sub.add_parser("train", help="fine-tune with risk-adaptive safety regularization")
    train.add_argument("--config", required=True, help="YAML file of TrainConfig keys")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(args.out, args.quick, args.seed)
    elif args.command == "probe":
        from .risk.probe_cli import run as probe_run

        return probe_run(args)
    elif args.command == "judge":
        from .eval.judge_cli import run as judge_run

        return judge_run(args)
    elif args.command == "audit":
        from .audit import run as audit_run

        return audit_run(args)
    elif args.command == "train":
        return _train(args)
    return 0


def _train(args) -> int:
    """Config errors and a diverged run exit 2 and 1 with one line, not a traceback."""
    from .train import NonFiniteLossError, TrainConfig, train

    try:
        cfg = TrainConfig.from_yaml(args.config)
        if args.resume:
            cfg.resume = True
        result = train(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"saferegx train: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"saferegx train: {e}", file=sys.stderr)
        return 1
    from .train import distributed

    target = result.save_adapter(result.output_dir / "final")
    last = result.history[-1] if result.history else {}
    if distributed.is_main():
        print(f"trained {len(result.history)} steps (loss {last.get('loss')}); saved {target}")
    distributed.shutdown()  # the process group train() joined under torchrun / accelerate launch
    return 0


if __name__ == "__main__":
    sys.exit(main())
