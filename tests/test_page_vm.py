"""The status page and the consoles for people, in a real browser against a
live lab: Debian's headless Chromium, driven by Selenium from PyPI with
Debian's chromedriver (SE_OFFLINE: nothing is downloaded).

The lab runs in its own netns and listens on TCP on that netns's loopback,
so the page is served as to a user on the host: reads open, consoles behind
the token. The browser reaches it through two socat hops (a unix socket
crosses the namespaces). Screenshots go to pytest's temporary directory,
never into the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from bridgelab.model import image_build

from .conftest import netns, stop_process
from .labrun import RunningLab, wait_settled

pytestmark = pytest.mark.vm
TOKEN = "page-token-0123456789abcdef"
LAB_PORT = 18795  # on the lab netns's loopback
PAGE_PORT = 18796  # on the host's loopback, what the browser opens
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HOSTNAMES = {"rv1": "bridgelab", "oe1": "openeuler-riscv64"}  # the images' recipes
LOGINS = {"rv1": ("root", "bridgelab"), "oe1": ("root", "openEuler12#$")}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    if os.geteuid() != 0:
        pytest.fail("VM tests need root")
    for image in ("debian-riscv64", "openeuler-like-riscv64"):
        image_build.build_image(image)  # a no-op when the cache already has it
    tmp = tmp_path_factory.mktemp("page")
    (tmp / "lab.yaml").write_text(
        "name: page\nbridge: {name: br0, address: 10.198.101.114/24}\n"
        "guests:\n"
        "  - {name: rv1, arch: riscv64, image: debian-riscv64, ip: 10.198.101.1}\n"
        "  - {name: oe1, arch: riscv64, image: openeuler-like-riscv64, ip: 10.198.101.2}\n")
    web = tmp / "web.sock"
    with netns("blpg") as ns, open(tmp / "serve.log", "wb") as log:
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "bridgelab.cli", "serve",
                "--lab", str(tmp / "lab.yaml"), "--listen", f"127.0.0.1:{LAB_PORT}", "--state-dir", str(tmp / "s")]
        env = {**os.environ, "BRIDGELAB_TOKEN": TOKEN}
        procs = [subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env),
                 subprocess.Popen(["ip", "netns", "exec", ns, "socat", f"UNIX-LISTEN:{web},fork",
                                   f"TCP:127.0.0.1:{LAB_PORT}"], stderr=log),
                 subprocess.Popen(["socat", f"TCP-LISTEN:{PAGE_PORT},bind=127.0.0.1,fork,reuseaddr",
                                   f"UNIX-CONNECT:{web}"], stderr=log)]
        try:
            api = httpx.Client(base_url=f"http://127.0.0.1:{PAGE_PORT}", timeout=600,
                               headers={"Authorization": f"Bearer {TOKEN}"})
            running = RunningLab(ns, procs[0], api, tmp / "s", tmp / "serve.log", argv)
            wait_settled(running)
            yield running
        finally:
            for proc in reversed(procs):
                stop_process(proc, 120)
            web.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Screenshots: test artifacts in pytest's temporary directory."""
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A fresh headless Chromium with an empty profile: no cookie yet."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for tool in (CHROMIUM, CHROMEDRIVER, shutil.which("socat")):
        assert tool and Path(tool).exists(), f"{tool} is missing (tests/run installs chromium, chromium-driver, socat)"
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1600", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: Any, what: Callable[[Any], Any], timeout: float = 60) -> Any:
    """Wait for `what`; an element the live feed redrew meanwhile is looked up again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.2,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(what)


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, selector)


def page_url() -> str:
    return f"http://127.0.0.1:{PAGE_PORT}/"


def guest_rows(driver: Any) -> dict[str, tuple[str, str]]:
    """The guests table as shown, read in one go: the feed redraws it on every change."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#guests tbody tr')].map(r => [r.dataset.guest,"
        " r.querySelector('td.state').textContent, r.querySelector('td.ip').textContent])")
    return {name: (state, ip) for name, state, ip in rows}


def screen_lines(driver: Any, box: str) -> list[str]:
    """The terminal's rows as text, without the blank rows below the cursor.
    Scrolled into view first, as a reader would: xterm.js draws a terminal
    only while it is on screen."""
    lines = [line.strip() for line in driver.execute_script(
        "const box = document.querySelector(arguments[0]); box.scrollIntoView({block: 'nearest'});"
        "return box.querySelector('.xterm-rows')?.innerText || ''", box).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def test_the_page_lists_the_guests_ready_with_their_addresses_and_draws_the_topology(lab, browser, shots):
    browser.get(page_url())
    guests = lab.guests()
    want = {name: ("ready", f"{g['ip']}/{g['prefix']}") for name, g in guests.items()}
    until(browser, lambda d: guest_rows(d) == want)
    nodes = {n.get_attribute("data-node"): n.get_attribute("class") for n in css(browser, "#topology g.node")}
    assert set(nodes) == {"bridge", "rv1", "oe1"}
    assert "state-ready" in nodes["rv1"] and "state-ready" in nodes["oe1"]
    topology_text = css(browser, "#topology")[0].text
    assert "br0" in topology_text and "10.198.101.1" in topology_text and "10.198.101.2" in topology_text
    assert css(browser, "#readiness")[0].text == "ready"
    assert {r.get_attribute("data-timeline") for r in css(browser, "#timeline .row")} == {"rv1", "oe1"}
    assert "login prompt" in css(browser, "#timeline [data-timeline=oe1]")[0].text
    browser.save_screenshot(str(shots / "status.png"))


def test_the_page_follows_the_lab_live(lab, browser):
    browser.get(page_url())
    until(browser, lambda d: guest_rows(d).get("rv1") == ("ready", "10.198.101.1/24"))
    # A change made through the API shows without a reload: the feed sends it.
    for ip in ("10.198.101.7", "10.198.101.1"):
        lab.api.put("/guests/rv1/network", json={"ip": ip}).raise_for_status()
        shown = ("ready", f"{ip}/24")
        until(browser, lambda d: guest_rows(d).get("rv1") == shown, 120)  # noqa: B023 (waited for here)
        until(browser, lambda d: ip in d.execute_script(  # noqa: B023
            "return document.querySelector('#topology [data-node=rv1]').textContent"))
    report = lab.api.post("/mesh").raise_for_status().json()
    assert report["ok"], report
    until(browser, lambda d: len(css(d, "#mesh [data-mesh=rv1] td.ok")) == 2)  # the bridge and oe1
    assert not css(browser, "#mesh td.fail")


def test_a_page_without_the_cookie_cannot_open_a_console(lab, browser, shots):
    browser.get(page_url())
    until(browser, lambda d: css(d, "button[data-console=rv1]"))
    css(browser, "button[data-console=rv1]")[0].click()
    until(browser, lambda d: css(d, "dialog#login[open]"))
    assert not any(screen_lines(browser, "#terminal")), "the console showed the guest without the token"
    browser.save_screenshot(str(shots / "console-asks-for-the-token.png"))
    # A wrong token is refused, and no cookie is set.
    css(browser, "#token")[0].send_keys("wrong-token-0123456789")
    css(browser, "#login-form button")[0].click()
    until(browser, lambda d: css(d, "#login-error")[0].text == "wrong token")
    assert browser.get_cookie("bridgelab_session") is None


def test_typing_hostname_into_a_guests_browser_console_shows_that_guests_hostname(lab, browser, shots):
    from selenium.webdriver.common.keys import Keys

    browser.get(page_url())
    until(browser, lambda d: css(d, "button[data-console=oe1]"))
    css(browser, "button[data-console=oe1]")[0].click()
    until(browser, lambda d: css(d, "dialog#login[open]"))
    css(browser, "#token")[0].send_keys(TOKEN)
    css(browser, "#login-form button")[0].click()
    cookie = until(browser, lambda d: d.get_cookie("bridgelab_session"))
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
    keyboard = css(browser, "#terminal textarea")[0]

    def typed(line: str, then: Callable[[list[str]], bool], timeout: float = 120) -> None:
        keyboard.send_keys(line + Keys.ENTER)
        until(browser, lambda d: then(screen_lines(d, "#terminal")), timeout)

    until(browser, lambda d: any(ln.endswith("login:") for ln in screen_lines(d, "#terminal")), 120)
    user, password = LOGINS["oe1"]
    typed(user, lambda lines: any(ln.startswith("Password:") for ln in lines))
    typed(password, lambda lines: any(ln.endswith("#") for ln in lines[-3:]))
    typed("hostname", lambda lines: HOSTNAMES["oe1"] in lines)  # a line of its own: the command's output
    browser.save_screenshot(str(shots / "console-oe1.png"))
    # What a person typed never reaches the automation: oe1 has no agent, so
    # this exec runs on its serial console, which the page shows below, live.
    r = lab.api.post("/guests/oe1/exec", json={"argv": ["sh", "-c", "echo $((6 * 7))"]}).raise_for_status().json()
    assert (r["exit_code"], r["output"].strip(), r["via"]) == (0, "42", "console")
    until(browser, lambda d: "42" in screen_lines(d, "#serial"))
    assert HOSTNAMES["oe1"] not in screen_lines(browser, "#serial")  # the person's command stayed on hvc0
    typed("exit", lambda lines: any(ln.endswith("login:") for ln in lines[-3:]))


def test_bridgelab_console_is_the_same_echoing_login(lab):
    user, password = LOGINS["rv1"]
    p = subprocess.run([sys.executable, "-m", "bridgelab.cli", "console", "rv1", "--api", f"127.0.0.1:{PAGE_PORT}"],
                       input=f"{user}\n{password}\nhostname\nexit\n", capture_output=True, text=True, timeout=300,
                       env={**os.environ, "BRIDGELAB_TOKEN": TOKEN})
    assert p.returncode == 0, p.stderr
    # The guest's shell marks prompts and commands (OSC 3008, bracketed paste): text only.
    text = re.sub(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b\[[0-9;?!]*[A-Za-z]|\x1b[78]", "", p.stdout)
    lines = [ln.strip() for ln in text.replace("\r", "").splitlines()]
    assert any(ln.endswith(f"login: {user}") for ln in lines), text  # the login name, echoed
    assert any(ln.endswith("# hostname") for ln in lines) and HOSTNAMES["rv1"] in lines, text
    assert [ln for ln in lines if ln.startswith("Password:")] == ["Password:"], text  # not echoed
