"""The API's exposure and input handling, against a live daemon in a netns.

The lab has one guest whose qemu cannot start, so the daemon is up in seconds
and nothing a request does can reach a real guest: every check here is about
what the API accepts, refuses, and leaves untouched on the host. Real guests
(exec, add/remove, restart) are in test_vm.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import delete_netns, links_in, make_netns, stop_process

pytestmark = pytest.mark.netns
TOKEN = "test-token-0123456789abcdef"
PORT = 18790
LAB = """name: blapi
bridge: {name: blapi0, address: 10.199.7.1/24}
guests:
  - {name: broken, image: debian-riscv64, qemu_args: ["-device", "no-such-device"]}
"""


@dataclass
class Daemon:
    ns: str
    proc: subprocess.Popen[bytes]
    log: Path
    state: Path
    listen: str

    def py(self, code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a python snippet in the daemon's netns (its loopback is not ours)."""
        return subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", code, *args],
                              capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)

    def request(self, method: str, path: str, token: str | None = None, **kw: object) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        code = ("import httpx, json, sys\n"
                "kw = json.loads(sys.argv[4])\n"
                "r = httpx.request(sys.argv[1], sys.argv[2] + sys.argv[3], timeout=30, **kw)\n"
                "print(r.status_code); print(r.text)")
        import json
        p = self.py(code, method, f"http://127.0.0.1:{PORT}", path, json.dumps({"headers": headers, **kw}))
        assert p.returncode == 0, p.stderr
        status, _, body = p.stdout.partition("\n")
        return int(status), body


def start_daemon(tmp: Path, listen: str, env: dict[str, str]) -> Daemon:
    ns = make_netns("blapi")
    (tmp / "lab.yaml").write_text(LAB)
    log = tmp / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "bridgelab.cli", "serve",
                                 "--lab", str(tmp / "lab.yaml"), "--listen", listen, "--state-dir", str(tmp / "s"),
                                 "--token-file", str(tmp / "api-token")],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    d = Daemon(ns, proc, log, tmp / "s", listen)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited: {log.read_text()[-3000:]}")
            if d.py(f"import socket; socket.create_connection(('127.0.0.1', {PORT}), 1)").returncode == 0:
                return d
            if time.monotonic() > deadline:
                pytest.fail(f"serve not listening: {log.read_text()[-3000:]}")
            time.sleep(0.2)
    except BaseException:
        stop_daemon(d)  # the netns too: a failed start must not leak it
        raise


def stop_daemon(d: Daemon) -> None:
    stop_process(d.proc, 60)
    delete_netns(d.ns)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("api"), f"127.0.0.1:{PORT}", {"BRIDGELAB_TOKEN": TOKEN})
    try:
        status, body = d.request("GET", "/wait?timeout=60")
        assert status == 200, body
        yield d
    finally:
        stop_daemon(d)


def host_objects(d: Daemon) -> tuple[dict[str, str], list[str]]:
    return links_in(d.ns), sorted(p.name for p in (d.state / "guests").iterdir())


# ---------------------------------------------------------------- auth


def test_loopback_listen_reads_are_open_changes_need_the_token(daemon):
    assert daemon.request("GET", "/guests")[0] == 200
    exec_body = {"json": {"argv": ["true"]}}
    assert daemon.request("POST", "/guests/broken/exec", **exec_body)[0] == 401
    assert daemon.request("POST", "/guests/broken/exec", token="wrong-token-0123456789", **exec_body)[0] == 401
    status, body = daemon.request("POST", "/guests/broken/exec", token=TOKEN, **exec_body)
    assert status == 409 and "failed" in body  # authorised; the guest is not ready
    assert daemon.request("GET", "/guests/broken/console")[0] == 401  # the console is never open
    assert daemon.request("POST", "/shutdown")[0] == 401
    assert daemon.proc.poll() is None


ATTACH = """
import sys
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
headers = {"Authorization": "Bearer " + sys.argv[2]} if sys.argv[2] else {}
with connect(sys.argv[1], additional_headers=headers) as ws:
    try:
        ws.recv(timeout=5)
    except ConnectionClosed as e:
        print(e.rcvd.code, e.rcvd.reason)
"""


def test_console_attach_needs_the_token_and_a_console(daemon):
    url = f"ws://127.0.0.1:{PORT}/guests/broken/console/attach"
    assert daemon.py(ATTACH, url, "").stdout.startswith("4401 ")
    assert daemon.py(ATTACH, url, "wrong-token-0123456789").stdout.startswith("4401 ")
    assert daemon.py(ATTACH, url, TOKEN).stdout.startswith("4409 ")  # authorised; qemu never started
    assert daemon.py(ATTACH, url.replace("broken", "nope"), TOKEN).stdout.startswith("4404 ")


def test_the_terminal_needs_the_token_and_names_a_missing_guest(daemon):
    url = f"ws://127.0.0.1:{PORT}/guests/broken/terminal"
    assert daemon.py(ATTACH, url, "").stdout.startswith("4401 ")
    assert daemon.py(ATTACH, url, TOKEN).stdout.startswith("4409 ")  # authorised; qemu never started
    assert daemon.py(ATTACH, url.replace("broken", "nope"), TOKEN).stdout.startswith("4404 ")


BROWSER = """
import json, sys
import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
base, token = sys.argv[1], sys.argv[2]
own = {"Origin": base}
evil = {"Origin": "http://evil.example"}
out = {}
with httpx.Client(base_url=base, timeout=30) as c:
    out["wrong"] = c.post("/session", json={"token": "wrong-token-0123456789"}, headers=own).status_code
    out["foreign_session"] = c.post("/session", json={"token": token}, headers=evil).status_code
    out["no_cookie_write"] = c.post("/mesh", headers=own).status_code
    r = c.post("/session", json={"token": token}, headers=own)
    out["session"] = r.status_code
    out["set_cookie"] = r.headers.get("set-cookie", "")
    cookie = c.cookies.get("bridgelab_session")
    out["cookie_is_not_the_token"] = cookie is not None and token not in cookie
    out["cookie_write"] = c.post("/mesh", headers=own).status_code
    out["cookie_write_foreign"] = c.post("/mesh", headers=evil).status_code
    out["bearer_write_foreign"] = c.post("/mesh", headers={**evil, "Authorization": "Bearer " + token}).status_code
    out["logout"] = c.delete("/session", headers=own).status_code
    out["after_logout"] = c.post("/mesh", headers=own).status_code

def ws(path, headers):
    with connect("ws" + base[4:] + path, additional_headers=headers) as w:
        try:
            w.recv(timeout=5)
            return "open"
        except ConnectionClosed as e:
            return e.rcvd.code
session = "bridgelab_session=" + cookie
out["ws_cookie"] = ws("/guests/broken/terminal", {**own, "Cookie": session})
out["ws_cookie_foreign"] = ws("/guests/broken/terminal", {**evil, "Cookie": session})
out["ws_bearer_foreign"] = ws("/guests/broken/console/attach", {**evil, "Authorization": "Bearer " + token})
out["ws_bad_cookie"] = ws("/guests/broken/terminal", {**own, "Cookie": "bridgelab_session=" + "0" * 64})
print(json.dumps(out))
"""


def test_a_browser_session_is_a_cookie_for_the_token_and_only_for_the_daemons_own_pages(daemon):
    p = daemon.py(BROWSER, f"http://127.0.0.1:{PORT}", TOKEN)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["wrong"] == 401 and out["foreign_session"] == 403 and out["no_cookie_write"] == 401
    assert out["session"] == 204
    cookie_attrs = [a.strip().lower() for a in out["set_cookie"].split(";")]
    assert "httponly" in cookie_attrs and "samesite=strict" in cookie_attrs and "path=/" in cookie_attrs
    assert out["cookie_is_not_the_token"]
    assert out["cookie_write"] == 200  # the mesh check ran: the cookie stands for the token
    assert out["cookie_write_foreign"] == 403 and out["bearer_write_foreign"] == 403
    assert out["logout"] == 204 and out["after_logout"] == 401
    assert out["ws_cookie"] == 4409  # admitted; this guest's qemu never started
    assert out["ws_cookie_foreign"] == 4403 and out["ws_bearer_foreign"] == 4403
    assert out["ws_bad_cookie"] == 4401
    assert TOKEN not in daemon.log.read_text()


FEED = """
import sys
import httpx
with httpx.stream("GET", sys.argv[1] + "/events", timeout=30) as r:
    print(r.status_code, r.headers["content-type"])
    for line in r.iter_lines():
        if line.startswith("data: "):
            print(line[6:])
            break
"""


def test_the_status_page_and_its_live_feed(daemon):
    status, html = daemon.request("GET", "/")
    assert status == 200 and "<title>bridgelab</title>" in html and "/events" not in html
    status, script = daemon.request("GET", "/static/app.js")
    assert status == 200 and 'new EventSource("/events")' in script
    assert daemon.request("GET", "/static/../app.py")[0] == 404
    p = daemon.py(FEED, f"http://127.0.0.1:{PORT}")
    assert p.returncode == 0, p.stderr
    head, data = p.stdout.splitlines()[:2]
    assert head.startswith("200 text/event-stream")
    state = json.loads(data)
    assert state["health"]["lab"] == "blapi" and state["health"]["bridge"] == "blapi0"
    assert [(g["name"], g["state"]) for g in state["guests"]] == [("broken", "failed")]
    assert state["guests"][0]["ip"].startswith("10.199.7.") and state["guests"][0]["console_tail"] == ""
    assert "/events" not in daemon.request("GET", "/openapi.json")[1]


def test_non_loopback_listen_needs_the_token_for_everything(tmp_path):
    d = start_daemon(tmp_path, f"0.0.0.0:{PORT}", {"BRIDGELAB_TOKEN": ""})
    try:
        token_file = tmp_path / "api-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert d.request("GET", "/guests")[0] == 401
        assert d.request("GET", "/healthz", token="x" * 20)[0] == 401
        assert d.request("GET", "/guests", token=token)[0] == 200
        # the CLI finds the token in the file, or refuses without it
        cli = [sys.executable, "-m", "bridgelab.cli", "status", "--api", f"127.0.0.1:{PORT}"]
        p = subprocess.run(["ip", "netns", "exec", d.ns, *cli, "--token-file", str(token_file)],
                           capture_output=True, text=True, env={**os.environ, "BRIDGELAB_TOKEN": ""})
        assert p.returncode == 1 and "broken" in p.stdout, p.stderr  # 1: not every guest is ready
        p = subprocess.run(["ip", "netns", "exec", d.ns, *cli, "--token-file", str(tmp_path / "none")],
                           capture_output=True, text=True, env={**os.environ, "BRIDGELAB_TOKEN": ""})
        assert p.returncode == 1 and "401" in p.stderr
        # ... and says where the token is, on the host and in the appliance
        assert f"{tmp_path / 'none'} is not readable here" in p.stderr, p.stderr
        assert "docker compose exec bridgelab cat /var/lib/bridgelab/state/api-token" in p.stderr, p.stderr
    finally:
        stop_daemon(d)


# ---------------------------------------------------------------- hostile input

INJECTIONS = [";", "$(reboot)", "`id`", "a\nb", "a\x00b", "a\x1b[2Jb", "a\rb", "\u009b", "x" * 300, "../../etc/passwd"]


CONTROL = [b for b in INJECTIONS if any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in b)]
ADD_CASES = ([(f, b) for f in ("name", "image", "ip", "mac", "tap", "memory", "cpus") for b in INJECTIONS]
             # a password may hold shell metacharacters (it is typed at a prompt, never run);
             # control characters and over-long ones are refused
             + [("login.password", b) for b in CONTROL + ["x" * 300]]
             + [("append", b) for b in CONTROL] + [("qemu_args", [b]) for b in ("-device", "x")])


@pytest.mark.parametrize("field, bad", ADD_CASES)
def test_injection_in_add_guest_is_422_and_nothing_changes(daemon, field, bad):
    before = host_objects(daemon)
    body: dict[str, object] = {"name": "rv9", "image": "debian-riscv64"}
    if field == "login.password":
        body["login"] = {"user": "root", "password": bad}
    else:
        body[field] = bad
    status, text = daemon.request("POST", "/guests", token=TOKEN, json=body)
    assert status == 422, (field, bad, text)
    assert host_objects(daemon) == before
    assert daemon.request("GET", "/guests/rv9")[0] == 404


@pytest.mark.parametrize("bad", INJECTIONS)
def test_injection_in_exec_network_and_paths_is_4xx(daemon, bad):
    before = host_objects(daemon)
    status, _ = daemon.request("POST", "/guests/broken/exec", token=TOKEN, json={"argv": ["echo", bad]})
    # Shell metacharacters are legal arguments (they are quoted, never run);
    # control characters and over-long arguments are not.
    assert status == (409 if bad in (";", "$(reboot)", "`id`", "../../etc/passwd", "x" * 300) else 422)
    assert daemon.request("PUT", "/guests/broken/network", token=TOKEN, json={"ip": bad})[0] == 422
    assert daemon.request("PUT", "/guests/broken/network", token=TOKEN,
                          json={"ip": "10.199.7.9", "dns": [bad]})[0] == 422
    from urllib.parse import quote
    for method, path in (("GET", "/guests/{}"), ("POST", "/guests/{}/reboot"), ("DELETE", "/guests/{}"),
                         ("GET", "/guests/{}/wait?timeout=0")):
        status, _ = daemon.request(method, path.format(quote(bad, safe="")), token=TOKEN)
        assert status in (404, 422), (method, path, bad, status)
    assert host_objects(daemon) == before


def test_limits_body_size_wait_and_exec_bounds(daemon):
    big = {"json": {"argv": ["echo", "x" * 70000]}}
    assert daemon.request("POST", "/guests/broken/exec", token=TOKEN, **big)[0] == 413
    chunked = ("import httpx, sys\n"
               "def gen():\n    for _ in range(100):\n        yield b'x' * 1024\n"
               f"r = httpx.post('http://127.0.0.1:{PORT}/guests', content=gen(), "
               "headers={'Authorization': 'Bearer ' + sys.argv[1], 'Content-Type': 'application/json'})\n"
               "print(r.status_code)")
    assert daemon.py(chunked, TOKEN).stdout.strip() == "413"
    assert daemon.request("GET", "/wait?timeout=99999")[0] == 422
    assert daemon.request("POST", "/guests/broken/exec", token=TOKEN,
                          json={"argv": ["true"], "timeout": 0})[0] == 422
    assert daemon.request("POST", "/guests/broken/exec", token=TOKEN, json={"argv": []})[0] == 422


def test_wait_reports_the_failed_guest_with_its_reason(daemon):
    import json
    status, body = daemon.request("GET", "/wait?timeout=5")
    result = json.loads(body)
    assert status == 200 and result["settled"] and result["ready"] == []
    [failed] = result["failed"]
    assert failed["name"] == "broken" and "no-such-device" in failed["reason"]
    p = subprocess.run(["ip", "netns", "exec", daemon.ns, sys.executable, "-m", "bridgelab.cli", "wait",
                        "--api", f"127.0.0.1:{PORT}", "--timeout", "5"], capture_output=True, text=True)
    assert p.returncode == 1 and "broken failed" in p.stderr, p.stderr


def test_readyz_is_503_while_a_guest_is_not_ready_and_names_it(daemon):
    import json
    status, body = daemon.request("GET", "/readyz")
    result = json.loads(body)
    assert status == 503 and result["ready"] is False, body
    assert (result["failed"], result["waiting"], result["stopped"]) == (["broken"], [], [])
    [guest] = result["guests"]
    assert guest["state"] == "failed" and "no-such-device" in guest["reason"]


def test_cli_options_go_before_or_after_the_subcommand_and_formats_agree(daemon):
    import json
    api = f"127.0.0.1:{PORT}"
    cli = ["ip", "netns", "exec", daemon.ns, sys.executable, "-m", "bridgelab.cli"]
    before = subprocess.run([*cli, "--api", api, "status", "--format", "json"], capture_output=True, text=True)
    after = subprocess.run([*cli, "status", "--api", api, "--json"], capture_output=True, text=True)
    assert before.returncode == after.returncode == 1, before.stderr + after.stderr  # broken is not ready
    assert [g["name"] for g in json.loads(before.stdout)] == [g["name"] for g in json.loads(after.stdout)]
    table = subprocess.run([*cli, "--api", api, "status"], capture_output=True, text=True).stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "IP", "MAC", "TAP", "SSH", "REASON"]
    assert table[1].split()[:2] == ["broken", "failed"] and "no-such-device" in table[1]


def test_shell_completion_offers_the_daemons_guest_names(daemon, tmp_path):
    out = tmp_path / "completions"
    line = f"bridgelab logs --api 127.0.0.1:{PORT} b"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"}
    p = subprocess.run(["ip", "netns", "exec", daemon.ns, sys.executable, "-m", "bridgelab.cli"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert out.read_text().split() == ["broken"]


def test_openapi_is_complete_with_typed_errors(daemon):
    import json
    status, body = daemon.request("GET", "/openapi.json")
    spec = json.loads(body)
    paths = spec["paths"]
    for path in ("/guests", "/guests/{name}", "/guests/{name}/exec", "/guests/{name}/wait", "/wait", "/mesh",
                 "/guests/{name}/network", "/guests/{name}/stop", "/guests/{name}/start", "/guests/{name}/console"):
        assert path in paths, path
    exec_responses = paths["/guests/{name}/exec"]["post"]["responses"]
    assert {"200", "401", "404", "409", "413", "422"} <= set(exec_responses)
    assert "504" in paths["/wait"]["get"]["responses"]
    assert {"200", "503"} <= set(paths["/readyz"]["get"]["responses"])
    assert "ExecRequest" in spec["components"]["schemas"]
    # Static constraints are in the document, not only in the server.
    schemas = spec["components"]["schemas"]
    name = schemas["AddGuest"]["properties"]["name"]
    assert (name["minLength"], name["maxLength"], name["pattern"]) == (1, 32, "^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
    assert schemas["ExecRequest"]["properties"]["argv"]["items"]["pattern"] == r"^[^\x00-\x1f\x7f-\x9f]*$"
    examples = paths["/guests/{name}/network"]["put"]["responses"]["422"]["content"]["application/json"]["examples"]
    assert "address_outside" in examples  # a dynamic 422, documented


def test_a_405_names_every_method_of_the_path(daemon):
    for method, path, allow in (("OPTIONS", "/guests", "GET, POST"), ("PATCH", "/guests/broken", "DELETE, GET"),
                                ("GET", "/mesh", "POST")):
        code = ("import httpx, sys\n"
                "r = httpx.request(sys.argv[1], sys.argv[2], timeout=30)\n"
                "print(r.status_code, r.headers.get('allow'))")
        p = daemon.py(code, method, f"http://127.0.0.1:{PORT}{path}")
        assert p.stdout.strip() == f"405 {allow}", (method, path, p.stdout, p.stderr)


def test_docs_work_offline_from_the_packages_own_files(daemon):
    import re
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        status, html = daemon.request("GET", page)
        assert status == 200 and "/openapi.json" in html, html[:500]
        urls = re.findall(r"""(?:src|href)=["']?([^"' >]+)""", html) + re.findall(r"url: ?'([^']+)'", html)
        assert urls and not [u for u in urls if "//" in u], urls  # nothing from another host
        [js] = [u for u in urls if u.endswith(asset)]
        status, body = daemon.request("GET", js)
        assert status == 200 and len(body) > 100_000, (js, status)


# ---------------------------------------------------------------- fuzzing


def test_schemathesis_with_every_check_finds_nothing(daemon, tmp_path):
    """Property-based requests from the live OpenAPI document, with every
    check: no 5xx, every response as documented, nothing valid by the schema
    refused for a static reason (tests/schemathesis.toml lists the dynamic
    422s), nothing invalid accepted, 405s that name every method.
    /shutdown is left out (it ends the run)."""
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.fail("schemathesis is not installed (tests/run installs .[test])")
    before = host_objects(daemon)
    p = subprocess.run(
        ["ip", "netns", "exec", daemon.ns, st, "--config-file", str(Path(__file__).parent / "schemathesis.toml"),
         "run", f"http://127.0.0.1:{PORT}/openapi.json",
         "-H", f"Authorization: Bearer {TOKEN}", "--exclude-path", "/shutdown", "--checks", "all",
         "--max-examples", "25", "--seed", "1", "--no-color", "--request-timeout", "30",
         "--max-time", "150", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]
    assert daemon.proc.poll() is None, daemon.log.read_text()[-3000:]
    # The fuzzer may remove the one guest (it learns names from responses);
    # it must never leave anything new on the host.
    links, _ = host_objects(daemon)
    assert set(links) <= set(before[0])
