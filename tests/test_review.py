"""The review page: a real server in a subprocess, driven over HTTP (and, where Chromium and
chromedriver are installed, in a real headless browser)."""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from selfinstruct.errors import ConfigError
from selfinstruct.records import Rating, example_key
from selfinstruct.review import (
    ANSWER_FIELDS,
    RECORD_FIELDS,
    is_reviewed,
    make_server,
    sample_examples,
    unique_rows,
)
from selfinstruct.runfolder import RunFolder

STATIC = Path(__file__).resolve().parents[1] / "src" / "selfinstruct" / "static"
HOSTILE = (
    '<img src=x onerror="window.__pwned=1"><b>bold</b>'
    "<script>window.__pwned=2</script> & \"quotes\" 'too'"
)


def example(i: int) -> dict[str, str]:
    return {
        "instruction": f"Task {i}: write a sentence about the number {i}.",
        "input": "" if i % 3 == 0 else f"number: {i}\nsecond line",
        "output": f"The number {i} is ünïcode-friendly.",
    }


def write_run(path: Path, examples: list[dict[str, str]]) -> RunFolder:
    run = RunFolder(path)
    run.finetuning_dir.mkdir(parents=True, exist_ok=True)
    run.all_instances.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return run


@pytest.fixture
def run(tmp_path: Path) -> RunFolder:
    examples = [example(i) for i in range(12)]
    examples.insert(4, {"instruction": HOSTILE, "input": "<i>in</i>", "output": "</pre><hr>"})
    examples.append(dict(examples[1]))  # the same triple twice: one example
    return write_run(tmp_path / "run", examples)


# --- a server in a subprocess ---------------------------------------------------------------


class Server:
    """`selfinstruct review RUN --port 0 ...` in a subprocess; `url` from its first line."""

    def __init__(self, run: RunFolder, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from selfinstruct.cli import main; main()", "review"]
            + [str(run.path), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.stderr = ""
        self.url = self._read_url()
        self.port = int(self.url.rsplit(":", 1)[1].rstrip("/"))

    def _read_url(self) -> str:
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        line = b""
        while not line.endswith(b"\n"):
            if time.monotonic() > deadline or not selector.select(deadline - time.monotonic()):
                self.kill()
                raise AssertionError(f"no URL printed in 60 s; stderr: {self.stderr}")
            chunk = os.read(self.proc.stdout.fileno(), 1)
            if not chunk:
                self.kill()
                raise AssertionError(f"server exited: {self.stderr}")
            line += chunk
        url = line.decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
        return url

    def kill(self, sig: int = signal.SIGKILL) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self.stderr = self.proc.stderr.read().decode()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.url + path.lstrip("/"), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def state(self) -> dict[str, Any]:
        status, _, body = self.get("api/state")
        assert status == 200
        return json.loads(body)

    def post(
        self, body: Any, *, raw: bytes | None = None, **headers: str
    ) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **headers}
        request = urllib.request.Request(
            self.url + "api/review", data=data, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Server] = []

    def start(run: RunFolder, *args: str) -> Server:
        server = Server(run, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.kill()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from selfinstruct.cli import main; main()", "review", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets listening on `port`, from /proc/net/tcp{,6}."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


# --- the library ------------------------------------------------------------------------------


def test_sample_is_seeded_in_file_order_and_counts_a_repeated_triple_once(run):
    examples = unique_rows(run)
    assert len(examples) == 13  # 14 lines, one a repeat
    assert [e.key for e in examples] == [example_key(*e.example.texts) for e in examples]
    a = sample_examples(examples, 5, seed=1)
    assert a == sample_examples(examples, 5, seed=1)
    assert [e.index for e in a] == sorted(e.index for e in a)
    others = {tuple(e.key for e in sample_examples(examples, 5, seed=s)) for s in range(2, 8)}
    assert len(others | {tuple(e.key for e in a)}) > 1
    assert len(sample_examples(examples, 500, seed=1)) == 13


def test_load_reviews_takes_the_last_line_per_key(tmp_path):
    run = RunFolder(tmp_path)
    assert run.reviews() == {}
    lines = [
        {"key": "k1", "rating": "A"},
        {"key": "k2", "rating": "C"},
        {"key": "k1", "rating": None, "valid_instruction": True},
    ]
    run.reviews_file.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"key": "k3", "ra')
    warnings: list[str] = []
    reviews = run.reviews(warn=warnings.append)
    assert {k: r.record for k, r in reviews.items()} == {"k1": lines[2], "k2": lines[1]}
    assert list(reviews) == ["k2", "k1"]  # in the order of each key's last line
    assert len(warnings) == 1 and "torn" in warnings[0]
    assert not run.reviews_file.read_text().endswith("\n")  # read only: nothing cut without repair
    assert not is_reviewed(reviews["k1"])
    assert is_reviewed(Rating.from_dict(
        {"key": "k", "rating": "D", "valid_instruction": False, "input_fits": False,
         "output_correct": False}
    ))  # fmt: skip


def test_library_server_binds_loopback_and_refuses_other_hosts(run):
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""):
        with pytest.raises(ConfigError, match="127.0.0.1 only"):
            make_server(run, host=host, port=0)
    server = make_server(run, host="localhost", port=0, sample=3)
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.server_address[1]}/"
        assert [r["key"] for r in server.session.state()["rows"]] == [
            e.key for e in sample_examples(unique_rows(run), 3, 0)
        ]
    finally:
        server.server_close()


# --- over HTTP --------------------------------------------------------------------------------


def test_page_is_static_self_contained_and_never_renders_text_as_html(run, serve):
    server = serve(run, "--sample", "20")
    status, headers, page = server.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<script src="review.js"' in page and b'href="review.css"' in page
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    for name, kind in (("review.js", "text/javascript"), ("review.css", "text/css")):
        status, headers, body = server.get(name)
        assert status == 200 and headers["Content-Type"].startswith(kind)
        assert body == (STATIC / name).read_bytes()
    # No network resource: nothing is loaded from anywhere but this server.
    for name in ("review.html", "review.js", "review.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]|@import|url\(", text, re.I), name
    # Escaping: run texts reach the page only as JSON data, put in with textContent.
    state = server.state()
    hostile = [r for r in state["rows"] if r["instruction"] == HOSTILE]
    assert hostile and hostile[0]["output"] == "</pre><hr>"
    assert b"bold" not in page and b"Task " not in page
    js = (STATIC / "review.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js
    assert server.get("/nothing-here")[0] == 404
    assert server.get("/../../etc/passwd")[0] == 404


def test_clicks_are_saved_at_once_and_survive_kill_9(run, serve):
    server = serve(run, "--sample", "5", "--seed", "7")
    state = server.state()
    assert state["sample"] == 5 and state["examples"] == 13 and state["reviewed"] == 0
    keys = [r["key"] for r in state["rows"]]
    first, second = state["rows"][0], state["rows"][1]

    clicks = [
        {"key": keys[0], "rating": "A"},
        {"key": keys[0], "valid_instruction": True},
        {"key": keys[0], "input_fits": False},
        {"key": keys[0], "output_correct": True},
    ]
    for n, click in enumerate(clicks, start=1):
        status, answer = server.post(click)
        assert status == 200, answer
        # Saved before the answer: the file already has this click's line.
        assert len(run.reviews_file.read_text().splitlines()) == n
    assert answer["reviewed"] == 1 and answer["sample"] == 5
    assert server.kill() == -signal.SIGKILL

    server = serve(run, "--sample", "5", "--seed", "7")
    state = server.state()
    assert [r["key"] for r in state["rows"]] == keys  # the same sample
    assert state["reviewed"] == 1
    row = state["rows"][0]
    assert (row["rating"], row["valid_instruction"], row["input_fits"], row["output_correct"]) == (
        "A",
        True,
        False,
        True,
    )
    for click in ({"key": keys[1], "rating": "C"}, {"key": keys[1], "valid_instruction": False}):
        assert server.post(click)[0] == 200
    assert server.post({"key": keys[0], "rating": None})[0] == 200  # clearing is a click too
    server.kill()

    server = serve(run, "--sample", "5", "--seed", "7")
    state = server.state()
    assert state["reviewed"] == 0
    assert [r["rating"] for r in state["rows"]] == [None, "C", None, None, None]
    assert state["rows"][0]["output_correct"] is True
    assert state["rows"][1]["valid_instruction"] is False
    assert state["rows"][1]["input_fits"] is None
    server.kill(signal.SIGINT)
    assert "stopped: 0 of 5 reviewed" in server.stderr

    lines = [json.loads(x) for x in run.reviews_file.read_text().splitlines()]
    assert len(lines) == 7
    for line in lines:
        assert tuple(line) == RECORD_FIELDS
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["at"])
    reviews = {k: r.record for k, r in run.reviews().items()}
    assert set(reviews) == {keys[0], keys[1]}
    for saved, shown in ((reviews[keys[0]], first), (reviews[keys[1]], second)):
        assert saved["key"] == example_key(shown["instruction"], shown["input"], shown["output"])
        assert (saved["instruction"], saved["input"], saved["output"]) == (
            shown["instruction"],
            shown["input"],
            shown["output"],
        )
    assert reviews[keys[1]]["rating"] == "C"


def test_progress_counts_rows_with_all_four_answers(run, serve):
    server = serve(run, "--sample", "3")
    keys = [r["key"] for r in server.state()["rows"]]
    for key in keys[:2]:
        for field, value in zip(ANSWER_FIELDS, ("B", True, True, False), strict=True):
            status, answer = server.post({"key": key, field: value})
            assert status == 200
    assert answer["reviewed"] == 2
    assert server.post({"key": keys[2], "rating": "D", "valid_instruction": False})[0] == 200
    assert server.state()["reviewed"] == 2


def test_one_review_page_per_run(run, serve):
    server = serve(run, "--sample", "2")
    result = cli(str(run.path), "--port", "0")
    assert result.returncode == 5
    assert result.stderr.strip().splitlines() == [
        f"error: {run.reviews_file}: another 'selfinstruct review' is serving this run;"
        " use its page, or stop it first"
    ]
    server.kill()  # even a kill -9 frees the run for the next page
    assert serve(run, "--sample", "2").state()["sample"] == 2


def test_a_torn_last_line_is_repaired_on_start_with_one_warning(run, serve):
    keys = [e.key for e in sample_examples(unique_rows(run), 4, 0)]
    saved = {"key": keys[2], "instruction": "x", "input": "", "output": "y", "rating": "D"}
    run.reviews_file.write_text(json.dumps(saved) + "\n" + '{"key": "' + keys[3] + '", "rati')
    server = serve(run, "--sample", "4")
    assert run.reviews_file.read_text() == json.dumps(saved) + "\n"
    state = server.state()
    assert [r["rating"] for r in state["rows"]] == [None, None, "D", None]
    assert server.post({"key": keys[3], "rating": "B"})[0] == 200
    server.kill()
    warnings = [x for x in server.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "torn last line" in warnings[0]
    assert str(run.reviews_file) in warnings[0]
    lines = run.reviews_file.read_text().splitlines()
    assert [json.loads(x)["rating"] for x in lines] == ["D", "B"]


def test_bad_posts_get_400_with_a_json_error_and_change_nothing(run, serve):
    server = serve(run, "--sample", "3")
    key = server.state()["rows"][0]["key"]
    bad = [
        ({"key": "0123456789abcdef", "rating": "A"}, "unknown key"),
        ({"rating": "A"}, "unknown key"),
        ({"key": key, "rating": "E"}, "rating"),
        ({"key": key, "rating": "a"}, "rating"),
        ({"key": key, "valid_instruction": "yes"}, "valid_instruction"),
        ({"key": key, "output_correct": 1}, "output_correct"),
        ({"key": key, "comment": "hi"}, "unknown field"),
        ({"key": key}, "nothing to save"),
        ([key, "A"], "JSON object"),
    ]
    for body, message in bad:
        status, answer = server.post(body)
        assert status == 400 and message in answer["error"], (body, answer)
    status, answer = server.post(None, raw=b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]
    status, answer = server.post(None, raw=b"\xff\xfe")
    assert status == 400
    # Other sites: a form post, a foreign Origin, a rebound host name.
    assert server.post({"key": key, "rating": "A"}, **{"Content-Type": "text/plain"})[0] == 415
    assert server.post({"key": key, "rating": "A"}, Origin="http://evil.example")[0] == 403
    assert server.post({"key": key, "rating": "A"}, Host="evil.example")[0] == 403
    assert server.get("api/state", Host=f"evil.example:{server.port}")[0] == 403
    assert server.post(None, raw=b" " * 20000)[0] == 413
    assert not run.reviews_file.exists() or run.reviews_file.read_text() == ""
    # Still serving, and a good click goes through from the page's own origin.
    origin = f"http://localhost:{server.port}"
    status, answer = server.post({"key": key, "rating": "A"}, Origin=origin)
    assert status == 200 and answer["review"]["rating"] == "A"


def test_concurrent_clicks_are_serialised_one_whole_line_each(run, serve):
    server = serve(run, "--sample", "13")
    keys = [r["key"] for r in server.state()["rows"]]
    errors: list[Any] = []

    def click(key: str, field: str, value: Any) -> None:
        status, answer = server.post({"key": key, field: value})
        if status != 200:
            errors.append(answer)

    threads = [
        threading.Thread(target=click, args=(key, field, value))
        for key in keys
        for field, value in zip(ANSWER_FIELDS, ("C", False, True, True), strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    lines = [json.loads(x) for x in run.reviews_file.read_text().splitlines()]
    assert len(lines) == 4 * 13
    assert all(is_reviewed(r) for r in run.reviews().values())
    assert server.state()["reviewed"] == 13


def test_listens_on_loopback_only(run, serve):
    server = serve(run, "--sample", "2", "--host", "localhost")
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp to read the listening sockets from")
    assert listening_addresses(server.port) == ["0100007F"]  # 127.0.0.1, no IPv6, no 0.0.0.0
    for host in ("0.0.0.0", "::", "10.1.2.3", "127.0.0.2"):
        result = cli(str(run.path), "--port", "0", "--host", host)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"error: --host '{host}': the review page is served on 127.0.0.1 only"
            " (it has no login; reach it from elsewhere through an SSH tunnel)"
        ]


def test_bad_input_gets_one_line_and_a_nonzero_exit(tmp_path, run):
    def one_line(result: subprocess.CompletedProcess) -> str:
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert result.stdout == ""
        return lines[0]

    assert "no such run folder" in one_line(cli(str(tmp_path / "nowhere"), "--port", "0"))
    (tmp_path / "bare").mkdir()
    line = one_line(cli(str(tmp_path / "bare"), "--port", "0"))
    assert "all_generated_instances.jsonl" in line and "selfinstruct prepare" in line
    empty = write_run(tmp_path / "empty", [])
    assert "no examples" in one_line(cli(str(empty.path), "--port", "0"))
    result = cli(str(run.path), "--sample", "0")  # click's usage error: the option named
    assert result.returncode == 2 and "'--sample': 0 is not in the range" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(cli(str(run.path), "--port", str(port)))
        assert f"--port {port}: already in use" in line


# --- in a real browser ------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} absent: install Debian's chromium and chromium-driver"
            " (apt-get install chromium chromium-driver) to run the page in a real browser"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium absent: pip install -e '.[test]'"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # given explicitly: selenium-manager downloads nothing
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_in_a_real_browser_clicks_and_keys_are_saved_and_shown_after_reload(
    tmp_path, serve, browser
):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    examples = [example(1), {"instruction": HOSTILE, "input": "", "output": "<b>x</b>"}]
    examples += [example(i) for i in (2, 3, 4)]
    run = write_run(tmp_path / "run", examples)
    server = serve(run, "--sample", "5")
    wait = WebDriverWait(browser, 30)

    def open_page() -> None:
        browser.get(server.url)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))

    def button(row: int, field: str, value: Any) -> Any:
        selector = f"#example-{row} button[data-field='{field}'][data-value='{json.dumps(value)}']"
        return browser.find_element(By.CSS_SELECTOR, selector)

    def progress() -> str:
        return browser.find_element(By.ID, "progress").text

    answers = {1: ("B", True, True, False), 2: ("D", False, True, False)}
    open_page()
    assert progress() == "0 of 5 reviewed"
    for row, values in answers.items():
        for field, value in zip(ANSWER_FIELDS, values, strict=True):
            button(row, field, value).click()
    wait.until(lambda d: progress() == "2 of 5 reviewed")
    wait.until(lambda d: len(run.reviews()) == 2 and all(map(is_reviewed, run.reviews().values())))

    # Keyboard: j to the third example, then a rating and the three answers.
    browser.find_element(By.CSS_SELECTOR, "#example-2 .example-head").click()
    ActionChains(browser).send_keys("j").send_keys("c", "y", "n", "y").perform()
    wait.until(lambda d: progress() == "3 of 5 reviewed")
    assert "current" in browser.find_element(By.ID, "example-4").get_attribute("class")
    # The page shows a click at once; wait for the server to have it before reloading.
    wait.until(lambda d: sum(map(is_reviewed, run.reviews().values())) == 3)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#example-3 .status").text == "saved")

    browser.refresh()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    assert progress() == "3 of 5 reviewed"
    answers[3] = ("C", True, False, True)
    for row, values in answers.items():
        for field, value in zip(ANSWER_FIELDS, values, strict=True):
            assert button(row, field, value).get_attribute("aria-pressed") == "true"
            other = {"rating": "A" if value != "A" else "B"}.get(field, not value)
            assert button(row, field, other).get_attribute("aria-pressed") == "false"
    saved = run.reviews()
    rows = server.state()["rows"]
    for row, values in answers.items():
        review = saved[rows[row - 1]["key"]].record
        assert tuple(review[f] for f in ANSWER_FIELDS) == values

    # The hostile instruction shows as text: no element made from it, no script run.
    shown = browser.find_elements(By.CSS_SELECTOR, "#example-2 pre")
    assert shown[0].get_attribute("textContent") == HOSTILE
    assert shown[0].find_elements(By.CSS_SELECTOR, "*") == []
    assert shown[2].get_attribute("textContent") == "<b>x</b>"
    assert browser.execute_script("return window.__pwned === undefined")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
