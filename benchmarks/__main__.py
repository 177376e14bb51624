"""`python -m benchmarks run [--quick] [--out DIR] [--only SECTION,...]`: the benchmark suite.

Sections: work-precision, width, kernel-size, anchors, ensembles (see `benchmarks/suite.py`). One JSON per
section, the figures and `summary.md` go to DIR (default benchmarks/results/suite, or suite-quick).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import suite


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in suite.SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected names from {', '.join(suite.SECTIONS)}")
    return names


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:  # one measurement in a fresh process (see _harness.spawn_task)
        suite.worker(argv[1])
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the benchmark suite")
    run.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    run.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # the test's scale
    run.add_argument("--out", type=Path, default=None, help="output folder")
    run.add_argument("--only", type=_sections, default=suite.SECTIONS, help="comma-separated sections")
    run.add_argument("--nt-venv", type=Path, default=None, help="neural-tangents venv (anchors)")
    run.add_argument("--rerun-anchors", action="store_true", help="rerun anchors instead of reusing them")
    run.add_argument("--anchor-widths", default="256,1024,4096")
    run.add_argument(
        "--data-dir", type=Path, default=suite.DATA_DIR, help="folder with mnist/ (full run's MNIST NTKs)"
    )
    run.add_argument("--note", default="", help="a line for summary.md (e.g. what else ran)")
    summarize = commands.add_parser("summarize", help="redraw figures and summary.md from a results folder")
    summarize.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "summarize":
        print(suite.render(args.out))
        return
    scale = "smoke" if args.smoke else "quick" if args.quick else "full"
    suite.run_suite(
        scale=scale,
        out=args.out,
        only=args.only,
        nt_venv=args.nt_venv,
        rerun_anchors=args.rerun_anchors,
        anchor_widths=[int(w) for w in args.anchor_widths.split(",")],
        data_dir=args.data_dir,
        note=args.note,
    )


if __name__ == "__main__":
    main()
