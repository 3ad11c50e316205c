"""The chat page of `ptune serve` in a real headless Chromium (Debian's chromium + chromedriver, driven by
selenium): send a message and see the answer stream in; compare two prefixes side by side. Answers are
checked against the API's own greedy answers."""

from __future__ import annotations

import json

import openai

from tests.e2e.conftest import needs_chromium

MAX_TOKENS = 40
pytestmark = needs_chromium


def expected(server, model: str, prompt: str) -> str:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    done = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, temperature=0
    )
    return done.choices[0].message.content


def open_page(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready")
    )
    for field, value in (("max-tokens", MAX_TOKENS), ("temperature", 0)):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(str(value))


def finished_answers(browser, scope: str, count: int):
    """The assistant bubbles under `scope` once `count` of them are no longer streaming."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d):
        bubbles = d.find_elements(By.CSS_SELECTOR, f"{scope} .msg.assistant")
        states = [b.get_attribute("data-state") for b in bubbles]
        return bubbles if len(bubbles) == count and "streaming" not in states else False

    return WebDriverWait(browser, 60).until(done)


def test_chat_streams_the_answer(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    want = expected(server, "p4", "你好")
    open_page(browser, server)
    assert [o.text for o in Select(browser.find_element(By.ID, "model")).options] == [
        "tiny-chatglm3 (base)",
        "p2 (prefix of 2)",
        "p4 (prefix of 4)",
        "p8 (prefix of 8)",
        "p16 (prefix of 16)",
    ]
    Select(browser.find_element(By.ID, "model")).select_by_value("p4")
    browser.find_element(By.ID, "input").send_keys("你好")
    browser.find_element(By.ID, "send").click()
    (answer,) = finished_answers(browser, "#messages", 1)
    assert answer.get_attribute("data-state") == "done"
    assert answer.find_element(By.CLASS_NAME, "text").get_attribute("textContent") == want
    assert int(answer.get_attribute("data-chunks")) > 1  # it arrived in pieces, as a stream
    assert [
        m.find_element(By.CLASS_NAME, "text").get_attribute("textContent")
        for m in browser.find_elements(By.CSS_SELECTOR, "#messages .msg.user")
    ] == ["你好"]


def test_compare_sends_one_message_to_two_prefixes(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    prompt = "hello there, how are you doing today?"
    left, right = expected(server, "p2", prompt), expected(server, "p16", prompt)
    assert left != right
    open_page(browser, server)
    browser.find_element(By.ID, "tab-compare").click()
    assert browser.find_element(By.ID, "view-chat").is_displayed() is False
    Select(browser.find_element(By.ID, "compare-left-model")).select_by_value("p2")
    Select(browser.find_element(By.ID, "compare-right-model")).select_by_value("p16")
    browser.find_element(By.ID, "compare-input").send_keys(prompt)
    browser.find_element(By.ID, "compare-send").click()
    (got_left,) = finished_answers(browser, "#compare-left", 1)
    (got_right,) = finished_answers(browser, "#compare-right", 1)
    assert got_left.find_element(By.CLASS_NAME, "text").get_attribute("textContent") == left
    assert got_right.find_element(By.CLASS_NAME, "text").get_attribute("textContent") == right
    browser.save_screenshot(str(server.log.parent / "compare.png"))


def test_chat_shows_a_tool_call_and_its_result(browser, tool_servers):
    """With tools in the tools box, the GLM-4 tool prefix's call shows as name(arguments); the next message is
    its result, after which the model answers."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from tests.tool_models import TOOLS, answer_of, result_of

    server = tool_servers["glm4"]
    open_page(browser, server)
    Select(browser.find_element(By.ID, "model")).select_by_value("glm4")  # the tool prefix, not the base
    browser.find_element(By.CSS_SELECTOR, "#tools-box summary").click()
    browser.find_element(By.ID, "tools").send_keys(json.dumps(TOOLS))
    browser.find_element(By.ID, "input").send_keys("weather in Paris?")
    browser.find_element(By.ID, "send").click()
    (call,) = finished_answers(browser, "#messages", 1)
    assert call.get_attribute("data-finish") == "tool_calls"
    assert (
        call.find_element(By.CLASS_NAME, "text").get_attribute("textContent")
        == 'get_weather({"city": "Paris"})'
    )
    assert browser.find_element(By.ID, "input").get_attribute("placeholder") == "result of get_weather"
    browser.find_element(By.ID, "input").send_keys(result_of("Paris"))
    browser.find_element(By.ID, "send").click()
    _, answer = finished_answers(browser, "#messages", 2)
    (result,) = browser.find_elements(By.CSS_SELECTOR, "#messages .msg.tool")
    assert result.find_element(By.CLASS_NAME, "text").get_attribute("textContent") == result_of("Paris")
    assert answer.find_element(By.CLASS_NAME, "text").get_attribute("textContent") == answer_of("Paris")
    assert answer.get_attribute("data-finish") == "stop"
