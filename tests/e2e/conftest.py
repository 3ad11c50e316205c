"""A live `ptune serve` shared by the API and chat-page tests: a tiny ChatGLM3 base and four prefixes of
different lengths (random, so that each answers differently), on a free loopback port."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from ptune.bench.serve import random_prefix
from tests.serving import Server
from tests.tool_models import make_tool_base, teach, write_rows
from tools.tiny import make_tiny_checkpoint

SERVE_PREFIXES = {"p2": 2, "p4": 4, "p8": 8, "p16": 16}  # name: pre_seq_len (seed = pre_seq_len)


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory):
    """(base folder, {prefix name: checkpoint folder})."""
    root = tmp_path_factory.mktemp("serve")
    base = make_tiny_checkpoint(root / "tiny-chatglm3", "chatglm3")
    prefixes = {name: random_prefix(base, root / name, n, seed=n) for name, n in SERVE_PREFIXES.items()}
    return base, prefixes


@pytest.fixture(scope="session")
def server(serve_models, tmp_path_factory):
    """The running server (`.port`, `.url`); stopped with SIGTERM at the end of the session."""
    base, prefixes = serve_models
    args = ["--model_name_or_path", str(base), "--max_batch", "16", "--max_queue", "64"]
    for name, path in prefixes.items():
        args += ["--prefix", f"{name}={path}"]
    running = Server(args, tmp_path_factory.mktemp("serve-log") / "serve.log")
    yield running
    assert running.stop() == 0, running.output()


TOOL_FAMILIES = ("glm4", "chatglm3", "llama")
# ptune train settings of the tool prefixes: (pre_seq_len, learning_rate, max_steps); each family's prefix then
# calls get_weather on both cities and answers its result (greedy), where the base alone answers NO_CALL.
TOOL_PREFIX_TRAINING = {"glm4": (8, "5e-2", 100), "chatglm3": (8, "5e-2", 100), "llama": (16, "1e-1", 300)}


@contextmanager
def one_thread():
    """torch on one thread: on a busy machine (the suite runs beside other work) two threads that wait for each
    other made these tiny trainings ten times slower (measured: 42-74 s instead of 4-8 s of CPU a family)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tool_bases(tmp_path_factory):
    """{family: folder} of tiny GLM-4, ChatGLM3 and native Llama bases taught to call get_weather when the
    conversation starts with a cue, and to answer a weather question with text without it
    (tests/tool_models.py)."""
    root = tmp_path_factory.mktemp("tool-bases")
    with one_thread():
        bases = {family: make_tool_base(root / family, family) for family in TOOL_FAMILIES}
        for family, folder in bases.items():
            teach(folder, family)
    return bases


@pytest.fixture(scope="session")
def tool_prefixes(tool_bases, tmp_path_factory):
    """{family: prefix checkpoint folder} trained with `ptune train` on the cue-less tool conversations
    (tests/tool_models.rows): the prefix has to learn to call, which the base without the cue does not."""
    import datasets

    root, prefixes = tmp_path_factory.mktemp("tool-prefixes"), {}
    old_cache, datasets.config.HF_DATASETS_CACHE = datasets.config.HF_DATASETS_CACHE, root / "datasets"
    try:
        with one_thread():
            for family, base in tool_bases.items():
                prefixes[family] = _train_tool_prefix(family, base, root)
    finally:
        datasets.config.HF_DATASETS_CACHE = old_cache
    return prefixes


def _train_tool_prefix(family: str, base: Path, root: Path) -> Path:
    """`ptune train` of the family's tool prefix, in root / family."""
    from ptune.cli import main

    fmt, train = write_rows(root / f"{family}.json", family)
    pre_seq_len, learning_rate, steps = TOOL_PREFIX_TRAINING[family]
    flags = {
        "model_name_or_path": base,
        "train_file": train,
        "data_format": fmt,
        "output_dir": root / family,
        "pre_seq_len": pre_seq_len,
        "learning_rate": learning_rate,
        "max_steps": steps,
        "per_device_train_batch_size": 3,
        "max_source_length": 1024,
        "max_target_length": 1024,
        "save_strategy": "no",
        "logging_steps": 50,
        "seed": 0,
        "use_cpu": "true",
        "report_to": "none",
        "disable_tqdm": "true",
    }
    argv = ["train", *(item for flag, value in flags.items() for item in (f"--{flag}", str(value)))]
    assert main(argv) == 0
    return root / family


@pytest.fixture(scope="session")
def tool_servers(tool_bases, tool_prefixes, tmp_path_factory):
    """{family: running `ptune serve` of that family's tool base, named f"{family}-base", with its tool prefix,
    named `family`}, started and stopped (SIGTERM) together."""
    from concurrent.futures import ThreadPoolExecutor

    logs = tmp_path_factory.mktemp("tool-serve-logs")

    def start(family: str) -> Server:
        base, prefix = tool_bases[family], tool_prefixes[family]
        args = [
            "--model_name_or_path",
            str(base),
            "--name",
            f"{family}-base",
            "--prefix",
            f"{family}={prefix}",
        ]
        return Server(args, logs / f"{family}.log")

    with ThreadPoolExecutor(len(tool_bases)) as pool:
        servers = dict(zip(tool_bases, pool.map(start, tool_bases), strict=True))
    yield servers
    with ThreadPoolExecutor(len(servers)) as pool:
        codes = list(pool.map(Server.stop, servers.values()))
    assert codes == [0] * len(servers), [s.output() for s in servers.values()]


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; "
    ".ci/run installs them)",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium driven by selenium through Debian's chromedriver, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
