"""Speed and memory benchmark on the ADGEN-shaped workload: `python scripts/bench.py --help` (see ptune/bench/run.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptune.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))  # through the CLI: bad input is one line, exit 2
