"""`ptune chat --tools FILE.json --ptuning_checkpoint` with the prefixes trained to call get_weather on tiny
bases (tests/tool_models.py): the call is shown, its result asked for on stdin, and the model answers with it."""

from __future__ import annotations

import io
import json

import pytest

from ptune.cli import main as cli_main
from ptune.infer import chat
from tests.tool_models import TOOLS, answer_of, result_of


@pytest.mark.parametrize(
    "family, name", [("glm4", "ChatGLM"), ("chatglm3", "ChatGLM"), ("llama", "Assistant")]
)
def test_chat_shows_the_call_and_asks_for_its_result(
    tool_bases, tool_prefixes, tmp_path, monkeypatch, capsys, family, name
):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS), encoding="utf-8")
    monkeypatch.setattr(
        "sys.stdin", io.StringIO(f"weather in Paris?\n{result_of('Paris')}\nclear\nhello\nexit\n")
    )
    argv = [
        "--model_name_or_path",
        str(tool_bases[family]),
        "--ptuning_checkpoint",
        str(tool_prefixes[family]),
    ]
    argv += ["--tools", str(tools), "--device", "cpu"]
    assert chat.main([*argv, "--max_new_tokens", "64"]) == 0
    out = capsys.readouterr().out
    expected = (
        f"用户: weather in Paris?\n\n{name}: get_weather({json.dumps({'city': 'Paris'})})\n"
        f"result of get_weather: {result_of('Paris')}\n\n{name}: {answer_of('Paris')}\n\n"
        f"用户: clear\n(history cleared)\n\n用户: hello\n\n{name}: Hi there.\n\n用户: exit\n"
    )
    assert out.endswith(expected), out


def test_a_bad_tools_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "tools.json"
    for text, message in [
        ('[{"type": "function"', f"--tools {bad}:1:21: invalid JSON (Expecting ',' delimiter)"),
        (
            '{"name": "f"}',
            f'--tools {bad}: must be a JSON list of tools, [{{"type": "function", "function": {{...}}}}]',
        ),
        ('[{"name": "f"}]', f'--tools {bad}: tool 0 has no function name ({{"name": "f"}})'),
    ]:
        bad.write_text(text, encoding="utf-8")
        assert cli_main(["chat", "--model_name_or_path", str(tmp_path), "--tools", str(bad)]) == 2
        assert capsys.readouterr().err == f"ptune chat: error: {message}\n"
