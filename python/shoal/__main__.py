"""Command line: ``python -m shoal demo [--quick]``."""
import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a CPU-bound job serially and on every pool, side by side")
    demo.add_argument("--quick", action="store_true", help="a smaller job (a few seconds)")
    args = parser.parse_args()
    if args.command == "demo":
        from .cli.demo import main as demo_main

        return demo_main(quick=args.quick)
    return 2


if __name__ == "__main__":
    sys.exit(main())
