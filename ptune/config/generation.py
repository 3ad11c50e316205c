"""`GenerationArguments`: how answers are generated, in eval and predict (with the run's config) and in chat.

A dataclass of its own because `ptune chat` uses it without any data or training arguments; like the others
it checks its values in `__post_init__` (one-line `BadArgument` naming the flag).
"""

import dataclasses
from dataclasses import dataclass, field

from ptune.config.argtypes import BadArgument, check_at_least


@dataclass
class GenerationArguments:
    """How answers are generated in eval/predict/chat (ptune only: THUDM hard-coded sampling).

    ptune generates greedily by default, so that predictions and scores are reproducible; THUDM sampled with
    top_p 0.7 and temperature 0.95, which `--do_sample true` restores.
    """

    _argument_group_name = "generation"

    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Most tokens generated per answer (default: val_max_target_length in eval/predict, 512 in chat)."
        },
    )
    do_sample: bool = field(
        default=False,
        metadata={"help": "Sample answers (top_p, temperature) instead of greedy decoding, as THUDM did."},
    )
    top_p: float = field(
        default=0.7, metadata={"help": "Nucleus sampling: keep the smallest token set with this much mass."}
    )
    temperature: float = field(
        default=0.95, metadata={"help": "Sampling temperature (lower: closer to greedy)."}
    )

    def __post_init__(self):
        check_at_least(self, 1, "max_new_tokens")
        from ptune.infer.generate import MIN_TEMPERATURE

        if not 0 < self.top_p <= 1:
            raise BadArgument(f"--top_p must be above 0 and at most 1, got {self.top_p}", "top_p")
        if not (MIN_TEMPERATURE <= self.temperature < float("inf")):
            raise BadArgument(
                f"--temperature must be at least {MIN_TEMPERATURE} and finite, got {self.temperature} "
                "(lower overflows; greedy decoding is --do_sample false)",
                "temperature",
            )
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = [n for n in ("top_p", "temperature") if getattr(self, n) != defaults[n]]
        if changed and not self.do_sample:
            # Greedy decoding ignores both; say so rather than let a tuned value do nothing.
            flags = " and ".join(f"--{n}" for n in changed)
            verb = "applies" if len(changed) == 1 else "apply"
            raise BadArgument(
                f"{flags} only {verb} when sampling: add --do_sample true or remove {flags}",
                *changed,
                "do_sample",
            )
