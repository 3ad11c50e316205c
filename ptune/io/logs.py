"""The log setup of a CLI run: ptune's INFO lines (WARNING on ranks that do not log), the libraries quieter."""

from __future__ import annotations

import logging


def setup_logging(training_args=None) -> None:
    level = logging.INFO
    if training_args is not None and not training_args.should_log:
        level = logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_warning()
    # ptune checks data files before datasets reads them and reports problems in one line of its own; datasets'
    # ERROR lines would only print the same cause above it, less precisely.
    datasets.utils.logging.set_verbosity(logging.CRITICAL)
