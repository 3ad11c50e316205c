"""`python tests/kill_at.py MOMENT ptune-args...`: run `ptune` and SIGKILL the process at an exact moment.

Test support for the crash tests (never imported by ptune). The process kills itself with SIGKILL, so what it
leaves on disk is exactly what a `kill -9` (or an OOM kill, a power loss after the page cache is flushed) at that
instant leaves — no clean-up code runs:

- `last-checkpoint`: right after `checkpoint-<max_steps>` is renamed into place, before rotation
  (`save_total_limit`) and before any of the run's final files are written;
- `plot`: while the final `training_curves.png` is being written (half of its bytes in
  `.training_curves.png.tmp`, not yet renamed into place).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys


def kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def at_last_checkpoint() -> None:
    import ptune.train.trainer
    from ptune.train.checkpoint import step_checkpoints

    rotate = ptune.train.trainer.rotate_checkpoints

    def rotate_or_die(run_dir, limit, keep=()):
        state_file = step_checkpoints(run_dir)[-1][1] / "trainer_state.json"
        state = json.loads(state_file.read_text())
        if state["global_step"] >= state["max_steps"]:
            kill()
        return rotate(run_dir, limit, keep)

    ptune.train.trainer.rotate_checkpoints = rotate_or_die


def during_plot() -> None:
    from matplotlib.figure import Figure

    savefig = Figure.savefig

    def half_then_die(self, fname, *args, **kwargs):
        whole = io.BytesIO()
        savefig(self, whole, *args, **kwargs)
        fname.write(whole.getvalue()[: len(whole.getvalue()) // 2])
        fname.flush()
        os.fsync(fname.fileno())
        kill()

    Figure.savefig = half_then_die


MOMENTS = {"last-checkpoint": at_last_checkpoint, "plot": during_plot}

if __name__ == "__main__":
    MOMENTS[sys.argv[1]]()
    from ptune.cli import main

    sys.exit(main(sys.argv[2:]))
