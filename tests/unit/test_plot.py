"""ptune.train.plot: the figure holds exactly the logged values; the PNG is valid and written atomically; bad
run folders end in one line on stderr and exit code 2."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from ptune.cli import main
from ptune.train.plot import PLOT_NAME, draw, plot_run, score_keys, series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = [5, 10, 15, 20]
LOSSES = [4.25, 3.5, 3.125, 2.875]
LRS = [0.02, 0.015, 0.01, 0.005]
SCORES = {"rouge-1": [21.5, 30.25], "rouge-2": [5.0, 7.75], "rouge-l": [19.0, 26.5], "bleu-4": [6.5, 9.125]}
EVAL_STEPS = [10, 20]
EVAL_LOSSES = [3.75, 3.25]


def _train_history() -> list[dict]:
    history = [
        {"epoch": s / 20, "grad_norm": 1.5, "learning_rate": lr, "loss": loss, "step": s}
        for s, loss, lr in zip(STEPS, LOSSES, LRS, strict=True)
    ]
    # The closing summary: `train_loss` is a run average, not a point of the `loss` curve.
    history.append({"epoch": 1.0, "step": 20, "train_loss": 3.4, "train_runtime": 12.0})
    return history


def _eval_history() -> list[dict]:
    """Training entries with an evaluation entry right after those of the evaluated steps, as logged."""
    history = []
    for entry in _train_history():
        history.append(entry)
        if "loss" in entry and entry["step"] in EVAL_STEPS:
            i = EVAL_STEPS.index(entry["step"])
            evaluation = {"epoch": entry["epoch"], "eval_loss": EVAL_LOSSES[i]}
            evaluation.update({f"eval_{k}": v[i] for k, v in SCORES.items()})
            evaluation.update({"eval_runtime": 1.25, "eval_empty_predictions": 0, "step": entry["step"]})
            history.append(evaluation)
    return history


def _lines(ax) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def _run_dir(tmp_path, history, name="run"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 20, "log_history": history}))
    return folder


def test_series_and_score_keys_pick_exact_values():
    history = _eval_history() + [{"loss": "nan-string", "step": 30}, {"loss": True, "step": 31}, "junk"]
    assert series(history, "loss") == (STEPS, LOSSES)
    assert series(history, "eval_loss") == (EVAL_STEPS, EVAL_LOSSES)
    assert score_keys(history) == ["eval_rouge-1", "eval_rouge-2", "eval_rouge-l", "eval_bleu-4"]
    assert score_keys(_train_history()) == []


def test_draw_without_eval_has_loss_and_learning_rate_panels():
    fig = draw(_train_history())
    assert len(fig.axes) == 2
    ax_loss, ax_lr = fig.axes
    assert _lines(ax_loss) == {"train loss": (STEPS, LOSSES)}
    assert _lines(ax_lr) == {"learning rate": (STEPS, LRS)}
    assert (ax_loss.get_ylabel(), ax_lr.get_ylabel(), ax_lr.get_xlabel()) == ("loss", "learning rate", "step")


def test_draw_with_eval_adds_eval_loss_and_score_panel():
    fig = draw(_eval_history(), title="demo")
    assert len(fig.axes) == 3
    ax_loss, ax_lr, ax_score = fig.axes
    assert _lines(ax_loss) == {"train loss": (STEPS, LOSSES), "eval loss": (EVAL_STEPS, EVAL_LOSSES)}
    assert _lines(ax_lr) == {"learning rate": (STEPS, LRS)}
    assert _lines(ax_score) == {k: (EVAL_STEPS, v) for k, v in SCORES.items()}
    assert [line.get_label() for line in ax_score.get_lines()] == list(SCORES)
    assert fig.get_suptitle() == "demo"


def test_draw_with_eval_loss_only_keeps_two_panels():
    history = _train_history() + [{"eval_loss": 3.0, "eval_runtime": 1.0, "step": 20}]
    fig = draw(history)
    assert len(fig.axes) == 2
    assert _lines(fig.axes[0])["eval loss"] == ([20], [3.0])


@pytest.mark.parametrize("with_eval", [False, True])
def test_plot_run_writes_a_valid_png(tmp_path, with_eval):
    folder = _run_dir(tmp_path, _eval_history() if with_eval else _train_history())
    path = plot_run(folder)
    assert path == folder / PLOT_NAME
    assert path.read_bytes()[:8] == PNG_MAGIC
    panels = 3 if with_eval else 2
    assert matplotlib.image.imread(path).shape == (300 * panels, 800, 4)
    assert {p.name for p in folder.iterdir()} == {PLOT_NAME, "trainer_state.json"}  # no temp file left


def test_plot_run_replaces_an_existing_png(tmp_path):
    folder = _run_dir(tmp_path, _train_history())
    (folder / PLOT_NAME).write_bytes(b"old")
    plot_run(folder)
    assert (folder / PLOT_NAME).read_bytes()[:8] == PNG_MAGIC


def test_cli_plot_with_out(tmp_path, capsys):
    folder = _run_dir(tmp_path, _eval_history())
    out = tmp_path / "figs" / "curves.png"
    assert main(["plot", str(folder), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert not (folder / PLOT_NAME).exists()
    _assert_one_line_error(capsys, main(["plot", str(folder), "--out", str(tmp_path)]), "is a folder")


def _assert_one_line_error(capsys, code, *fragments):
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ptune plot: error: ")
    for fragment in fragments:
        assert fragment in err


def test_cli_plot_missing_folder(tmp_path, capsys):
    missing = tmp_path / "missing"
    _assert_one_line_error(capsys, main(["plot", str(missing)]), str(missing), "folder not found")


def test_cli_plot_missing_trainer_state(tmp_path, capsys):
    _assert_one_line_error(
        capsys, main(["plot", str(tmp_path)]), str(tmp_path / "trainer_state.json"), "file not found"
    )


def test_cli_plot_without_loss_entries(tmp_path, capsys):
    folder = _run_dir(tmp_path, [{"step": 3, "train_loss": 2.0, "train_runtime": 1.0}])
    _assert_one_line_error(
        capsys, main(["plot", str(folder)]), str(folder / "trainer_state.json"), "no training loss"
    )
    assert not (folder / PLOT_NAME).exists()


def test_cli_plot_bad_state_files(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    state = folder / "trainer_state.json"
    state.write_text('{"log_history": [')
    _assert_one_line_error(capsys, main(["plot", str(folder)]), f"{state}:1:", "not valid JSON")
    state.write_text('{"global_step": 3}')
    _assert_one_line_error(capsys, main(["plot", str(folder)]), str(state), "log_history")
    state.write_text('{"global_step": 3, "log_history": {"loss": 1.0, "step": 1}}')
    _assert_one_line_error(
        capsys,
        main(["plot", str(folder)]),
        f"{state}: 'log_history' must be a list of logged entries, got dict",
    )
