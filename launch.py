#!/usr/bin/env python
"""Entry point of the grid launcher: ``python launch.py --grid grids/<grid>.yaml [--cluster ...]``.

Everything (grid expansion, submitit on SLURM or local processes, chained evaluation, --status,
--retry-failed, --cancel) lives in ``launcher/``; this file only hands the command line to it.
"""
import sys

from launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
