"""Command line: ``python -m shoal demo | top | dashboard``."""
import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a CPU-bound job serially and on every pool, side by side")
    demo.add_argument("--quick", action="store_true", help="a smaller job (a few seconds)")
    from .cli import dashboard, top

    top.add_arguments(sub.add_parser("top", help="a live terminal view of every shoal pool of this user"))
    dashboard.add_arguments(sub.add_parser("dashboard", help="serve a live web page of every shoal pool of this user"))
    args = parser.parse_args()
    if args.command == "demo":
        from .cli.demo import main as demo_main

        return demo_main(quick=args.quick)
    if args.command == "top":
        return top.run(args)
    if args.command == "dashboard":
        return dashboard.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
