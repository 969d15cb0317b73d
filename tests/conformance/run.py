"""`python tests/conformance/run.py [--report] [NAME ...]`: replay conformance scenarios (all, or the
named ones) through `cilia serve` and Envoy; with --report, write docs/conformance/ from the results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from conformance import report, scenarios  # noqa: E402
from conformance.runner import SCENARIOS, World, run, running_as_root  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", help="scenarios to run (default: all)")
    ap.add_argument("--report", action="store_true", help="write the conformance report under docs/conformance/")
    ap.add_argument("--fast", action="store_true", help="only the quick subset")
    args = ap.parse_args()
    assert scenarios.SKIPPED is not None
    if not running_as_root():
        print("the runner binds the suite's ports (80, 443, 8080): run it as root", file=sys.stderr)
        return 2
    names = args.names or [n for n, s in SCENARIOS.items() if s.fast or not args.fast]
    world = World().start()
    try:
        outcomes = run(world, names)
    finally:
        world.stop()
    for o in outcomes:
        print(f"{'PASS' if o.passed else 'FAIL'} {o.name} ({o.seconds:.1f}s){': ' + o.message if o.message else ''}")
    print(f"{sum(o.passed for o in outcomes)} passed, {sum(not o.passed for o in outcomes)} failed")
    if args.report:
        report.write(outcomes, TESTS.parent / "docs" / "conformance")
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
