"""The label convention of every encoded example: what a position that is not learned holds.

`labels[i] == IGNORE_INDEX` means position i is not trained on (the prompt, the padding, a turn that is not
learned); the loss (`ptune.model.load`), the collator, the metrics and `ptune data` read it alike. -100 is the
value torch's cross-entropy and transformers ignore by default.
"""

IGNORE_INDEX = -100
