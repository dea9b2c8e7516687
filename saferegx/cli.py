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
    train = sub.add_parser("train", help="fine-tune with risk-adaptive safety regularization")
    train.add_argument("--config", required=True, help="YAML file of TrainConfig keys")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .op_demo import main as demo_main

        demo_main(args.steps)
    elif args.command == "probe":
        from .risk.probe_cli import run as probe_run

        return probe_run(args)
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
    target = result.save_adapter(result.output_dir / "final")
    last = result.history[-1] if result.history else {}
    print(f"trained {len(result.history)} steps (loss {last.get('loss')}); saved {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
