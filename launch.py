#!/usr/bin/env python
"""Entry point of the grid launcher: ``python launch.py --grid grids/<grid>.yaml [--cluster ...]``.

The launcher (grid expansion, submitit on SLURM or local processes, chained evaluation) lives in
``launcher/``; this file only hands the command line to it.
"""
import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from launcher.cli import main as launcher_main
    except ImportError:
        print("launch.py: the grid launcher (launcher/cli.py) is not in this version yet; "
              "available now: python -m ecg_core.data.ingest --help, python -m ecg_core.data.demo --help",
              file=sys.stderr)
        return 2
    return launcher_main(argv)


if __name__ == "__main__":
    sys.exit(main())
