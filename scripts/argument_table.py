#!/usr/bin/env python
"""Print the README's config reference (every argument ptune declares, with default and help) as Markdown.

python scripts/argument_table.py      # tests/unit/test_configs.py checks the README holds exactly this
"""

from ptune.config.args import argument_reference


def argument_table() -> str:
    lines, group = [], None
    for grp, name, default, help_text in argument_reference():
        if grp != group:
            if group is not None:
                lines.append("")
            lines += [f"**{grp}**", "", "| argument | default | what it does |", "| --- | --- | --- |"]
            group = grp
        lines.append(f"| `{name}` | `{default}` | {help_text.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(argument_table())
