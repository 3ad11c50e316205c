"""`ptune plot OUTPUT_DIR`: training curves from the Trainer's `trainer_state.json`, as one PNG.

The Trainer keeps every logged value in `trainer_state.json` → `log_history`, a list of dicts:
- training entries `{"loss", "learning_rate", "grad_norm", "epoch", "step"}` every `logging_steps`;
- evaluation entries `{"eval_loss", "eval_rouge-1", ..., "eval_bleu-4", "eval_runtime", ..., "step"}`;
- one closing summary `{"train_loss", "train_runtime", ..., "step"}` (a run average, not a curve point).
`draw` turns that list into a matplotlib Figure: loss (training, and evaluation when present) vs step,
learning rate vs step, and ROUGE/BLEU vs step when the run evaluated with generation. The figure is drawn
with the Agg canvas directly (no pyplot, no display, no global backend switch), and the PNG is written
to a temporary file first and renamed into place, so a crash never leaves a half-written image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ptune.config.parser import Command, parse_command
from ptune.io.errors import UserError
from ptune.io.files import read_json, replacing

PLOT_NAME = "training_curves.png"
STATE_NAME = "trainer_state.json"
# Evaluation metrics drawn on the score panel: eval_<name> where <name> starts with one of these.
SCORE_PREFIXES = ("rouge", "bleu")


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every log entry holding a numeric `key` and a `step`, in logged order."""
    steps, values = [], []
    for entry in history:
        if not isinstance(entry, dict):
            continue
        value, step = entry.get(key), entry.get("step")
        if _is_number(value) and _is_number(step):
            steps.append(int(step))
            values.append(float(value))
    return steps, values


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def score_keys(history: list[dict]) -> list[str]:
    """`eval_rouge-1`, `eval_bleu-4`, ... in the order they first appear in the log."""
    keys: list[str] = []
    for entry in history:
        if not isinstance(entry, dict):
            continue
        for key in entry:
            if key.startswith("eval_") and key[5:].startswith(SCORE_PREFIXES) and key not in keys:
                keys.append(key)
    return keys


def draw(history: list[dict], title: str | None = None):
    """A Figure with one panel per quantity, sharing the step axis:

    - "loss": `train loss` (from `loss`) and, when evaluated, `eval loss` (from `eval_loss`);
    - "learning rate": `learning rate` (from `learning_rate`);
    - "score" (only when the log holds ROUGE/BLEU): one line per metric, labelled without `eval_`.
    Each line's x/y data are exactly the logged steps and values. Lines with few points get markers, so a
    single evaluation still shows.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores = score_keys(history)
    panels = ["loss", "learning rate"] + (["score"] if scores else [])
    fig = Figure(figsize=(8, 3 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: rendering goes through Agg
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    ax_loss, ax_lr = axes[0], axes[1]

    _line(ax_loss, *series(history, "loss"), "train loss")
    eval_steps, eval_loss = series(history, "eval_loss")
    if eval_steps:
        _line(ax_loss, eval_steps, eval_loss, "eval loss")
    ax_loss.set_ylabel("loss")

    _line(ax_lr, *series(history, "learning_rate"), "learning rate")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    if scores:
        ax_score = axes[2]
        for key in scores:
            _line(ax_score, *series(history, key), key[len("eval_") :])
        ax_score.set_ylabel("score (x100)")

    for ax in axes:
        ax.grid(True, alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("step")
    if title:
        fig.suptitle(title)
    return fig


def _line(ax, steps: list[int], values: list[float], label: str) -> None:
    marker = "o" if len(steps) <= 30 else None
    ax.plot(steps, values, label=label, marker=marker, markersize=3)


def read_history(state_file: Path) -> list[dict]:
    """`log_history` of a trainer_state.json; UserError naming the file when it is missing or unusable."""
    if not state_file.is_file():
        raise UserError(
            f"{state_file}: file not found (ptune train writes it at the end of a run and in every checkpoint-N)"
        )
    state = read_json(state_file)
    history = state.get("log_history")
    if not isinstance(history, list):
        raise UserError(
            f"{state_file}: 'log_history' must be a list of logged entries, got {type(history).__name__} "
            "(not a Trainer state file?)"
        )
    return history


def plot_run(output_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw `output_dir/trainer_state.json` into `out` (default `output_dir/training_curves.png`); return it."""
    folder = Path(output_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found")
    state_file = folder / STATE_NAME
    history = read_history(state_file)
    steps, _ = series(history, "loss")
    if not steps:
        raise UserError(
            f"{state_file}: no training loss in log_history (nothing logged yet: fewer steps than logging_steps?)"
        )
    target = Path(out) if out is not None else folder / PLOT_NAME
    if target.is_dir():
        raise UserError(f"--out {target}: is a folder; give a file name such as {target / PLOT_NAME}")
    fig = draw(history, title=f"{folder.resolve().name} (step {max(steps)})")
    save_png(fig, target)
    return target


def save_png(fig, target: Path) -> None:
    """Write `fig` as PNG to a temporary sibling, flush it to disk, then rename it over `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


@dataclass
class PlotArguments:
    """`ptune plot`'s arguments."""

    output_dir: str = field(
        metadata={"positional": True, "help": "a run's output_dir (or one of its checkpoint-N folders)"}
    )
    out: str | None = field(
        default=None, metadata={"help": f"PNG file to write (default: OUTPUT_DIR/{PLOT_NAME})"}
    )


COMMAND = Command(
    "ptune plot",
    (PlotArguments,),
    "Draw loss, learning rate and evaluation scores vs step from OUTPUT_DIR/trainer_state.json.",
)


def main(argv: list[str]) -> int:
    """`ptune plot OUTPUT_DIR [--out FILE]`: redraw the training curves of a run and print the PNG's path."""
    (args,) = parse_command(COMMAND, argv)
    print(plot_run(args.output_dir, args.out))
    return 0
