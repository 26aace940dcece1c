"""Console protocol against a scripted fake guest on a real pty running real bash."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pexpect
import pytest
from bridgelab.errors import BootFailed, ConsoleTimeout, LoginIncorrect
from bridgelab.guest.console import Console, result_pattern, split_marker, strip_escapes, wrap_command
from bridgelab.guest.session import readable
from bridgelab.guest.firmware import HOLD_LIMIT, UBOOT_STOPPED, FirmwareGuard

FAKE = Path(__file__).with_name("fakeguest.py")
DATA = json.loads((Path(__file__).parent / "data" / "sid-console.json").read_text())


@pytest.fixture
def spawn_fake(tmp_path):
    children = []

    def start(*args: str) -> Console:
        child = pexpect.spawn(sys.executable, [str(FAKE), *args], encoding="utf-8", codec_errors="replace",
                              env={"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                              dimensions=(24, 80))
        children.append(child)
        transcript = open(tmp_path / "transcript.log", "w")
        return Console(child, "fake", transcript)

    yield start
    for c in children:
        c.close(force=True)


def test_strip_escapes_on_real_sid_output():
    text = strip_escapes(DATA["boot"] + "bridgelab login: ")
    assert "\x1b" not in text
    assert "3008" not in text and "6E616D65" not in text
    assert text.rstrip().endswith("bridgelab login:")
    assert strip_escapes("\x1b[32mWired\x1b[0m:\x1b[1;33m02:00\x1b[0m\r\n") == "Wired:02:00\n"
    # Answers to terminal queries, echoed back in caret notation by the guest's tty.
    echoed = "^[P0+r^[\\^[[50;200R^[[50;200R^[P0+r^[\\[ TIME ] Timed out waiting for device dev-ttyS0.device.\r\n"
    assert readable(echoed) == "[ TIME ] Timed out waiting for device dev-ttyS0.device.\n"
    assert strip_escapes("^[[1m\n") == "^[[1m\n"  # a command's output keeps what it printed


def test_markers_never_match_their_own_echo():
    line = wrap_command("true", "abc123")
    assert "Babc123" not in line and "Eabc123" not in line
    assert split_marker("XYZW") == "'XY''ZW'"
    m = result_pattern("t1").search("noise\r\nBt1\r\nhello\r\nEt1 7\r\n")
    assert m and m.group(1) == "hello\r\n" and m.group(2) == "7"


def test_login_and_commands_with_exit_codes(spawn_fake):
    c = spawn_fake()
    prompts = []
    c.login("root", "bridgelab", timeout=20, on_login_prompt=lambda: prompts.append(1))
    assert prompts
    assert c.run("echo hello; (exit 3)") == (3, "hello\n")
    rc, out = c.run("printf 'a:b\\n'; echo \"$TERM\"")
    assert rc == 0 and out == "a:b\ndumb\n"
    # quoting: characters that would break an unquoted command line
    rc, out = c.run("printf '%s\\n' \"$(printf 'x;y|z')\"")
    assert out == "x;y|z\n"
    assert "\x1b" not in c.check("ls /")
    # the transcript records the session
    c.transcript.flush()
    assert "[bridgelab] $ echo hello" in Path(c.transcript.name).read_text()


def test_interleaved_kernel_messages_do_not_break_exit_codes(spawn_fake):
    c = spawn_fake("--noise", "0.05")
    c.login("root", "bridgelab", timeout=20)
    for i in range(10):
        rc, out = c.run(f"sleep 0.02; echo line{i}; (exit {i})")
        assert rc == i
        assert f"line{i}" in out


def test_capped_output_keeps_the_commands_own_exit_status(spawn_fake):
    """256 KiB, far past the pipe's buffer, after the cap: the command still
    ends by itself with its own status, not by SIGPIPE (141)."""
    c = spawn_fake()
    c.login("root", "bridgelab", timeout=20)
    rc, out = c.run("head -c 262144 /dev/zero | tr '\\0' y", cap=100)
    assert (rc, out) == (0, "y" * 101), (rc, out[:200])  # 101: one byte past the cap shows the cut


def test_wrong_password_is_a_clear_failure(spawn_fake):
    c = spawn_fake("--password", "other")
    t = time.monotonic()
    with pytest.raises(LoginIncorrect, match="root"):
        c.login("root", "bridgelab", timeout=30)
    assert time.monotonic() - t < 10, "a refused login must not wait for the boot timeout"


def test_idle_console_gets_a_newline(spawn_fake):
    c = spawn_fake("--silent")
    c.login("root", "bridgelab", timeout=20, idle=0.5)
    assert c.check("echo ok") == "ok\n"


def test_no_prompt_times_out_with_the_last_output(spawn_fake):
    c = spawn_fake("--never-prompt")
    with pytest.raises(ConsoleTimeout, match="no shell after"):
        c.login("root", "bridgelab", timeout=2, idle=0.5)


def test_a_getty_that_systemd_gave_up_on_fails_at_once_with_that_line(spawn_fake):
    c = spawn_fake("--getty-fails")
    t = time.monotonic()
    with pytest.raises(BootFailed, match=r"boot failed: \[ TIME \] Timed out waiting for device dev-ttyS0.device"):
        c.login("root", "bridgelab", timeout=60, idle=0.5)
    assert time.monotonic() - t < 5


def test_a_getty_given_up_on_the_virtio_console_is_not_a_failed_boot(spawn_fake):
    """hvc0 is the people's console: its getty failing (16 guests on 2
    cores) leaves the serial console's login to come."""
    c = spawn_fake("--hvc-getty-fails")
    c.login("root", "bridgelab", timeout=60, idle=0.5)
    assert c.check("echo ok") == "ok\n"


def test_command_timeout_interrupts_and_console_recovers(spawn_fake):
    c = spawn_fake()
    c.login("root", "bridgelab", timeout=20)
    with pytest.raises(ConsoleTimeout):
        c.run("sleep 30", timeout=1)
    assert c.check("echo still-here") == "still-here\n"


def test_stdin_is_closed_for_commands(spawn_fake):
    c = spawn_fake()
    c.login("root", "bridgelab", timeout=20)
    rc, out = c.run("cat; echo done", timeout=5)
    assert (rc, out) == (0, "done\n")


def _uart_server(path: Path, nbytes: int, done: list[float]):
    """Like qemu's serial chardev: one byte per write, to whoever is connected."""
    import socket
    import threading

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        t = time.monotonic()
        try:
            for _ in range(nbytes):
                conn.send(b"x")
            done.append(time.monotonic() - t)
            conn.send(b"\r\nbridgelab login: ")
            time.sleep(5)
        except OSError:
            pass  # the client went away (the raw-socket half of the test)
        finally:
            conn.close()
            srv.close()
    threading.Thread(target=run, daemon=True).start()


def test_an_unread_console_never_blocks_the_guest(tmp_path):
    """qemu blocks the guest UART when its socket client stops reading; the
    console must keep draining even while nobody is expecting anything."""
    import socket

    raw_done: list[float] = []
    _uart_server(tmp_path / "raw.sock", 20000, raw_done)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(tmp_path / "raw.sock"))
    time.sleep(1.0)
    assert not raw_done, "a plain unread socket should block the writer (the failure this guards against)"
    raw.close()

    done: list[float] = []
    _uart_server(tmp_path / "c.sock", 20000, done)
    c = Console.connect_unix(tmp_path / "c.sock", "uart")
    try:
        deadline = time.monotonic() + 5
        while not done and time.monotonic() < deadline:
            time.sleep(0.05)  # nobody reads from the console meanwhile
        assert done, "the guest side was blocked by an idle console"
        assert c.child.expect([r"login: ", pexpect.TIMEOUT], timeout=5) == 0
    finally:
        c.close()


def test_terminal_queries_are_answered_once_even_when_split():
    from bridgelab.guest.console_stream import terminal_replies
    boot = DATA["boot"].encode()
    assert terminal_replies(b"", boot).count(b"\x1b[50;200R") == boot.count(b"\x1b[6n") > 0
    assert terminal_replies(b"", boot).count(b"\x1bP0+r\x1b\\") == boot.count(b"\x1bP+q") > 0
    # a query split across two reads is answered by the read that completes it, and only once
    assert terminal_replies(b"", b"abc\x1b[") == []
    assert terminal_replies(b"abc\x1b[", b"6nxyz") == [b"\x1b[50;200R"]
    assert terminal_replies(b"\x1b[6n"[-3:], b"more") == []


def test_boot_stages_from_a_real_transcript_and_split_reads():
    from bridgelab.guest.console_stream import boot_stages
    boot = DATA["boot"].encode()
    stages = boot_stages(b"", boot)
    assert "userspace" in stages
    # fed in small reads, each stage is reported by exactly the read that completes its marker
    seen: list[str] = []
    tail = b""
    for i in range(0, len(boot), 7):
        chunk = boot[i:i + 7]
        seen += boot_stages(tail, chunk)
        tail = (tail + chunk)[-16:]
    assert set(seen) == set(stages)
    assert boot_stages(b"", b"OpenSBI v1.1\r\n...Linux version 6.1") == ["firmware", "kernel"]
    assert boot_stages(b"OpenSB", b"I v1.5") == ["firmware"]
    assert boot_stages(b"OpenSBI v", b"1.5") == []



def _attempts(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_session_the_guest_ended_is_logged_into_again_before_the_next_command(spawn_fake, tmp_path):
    """TMOUT, and a `logout` typed on an attached console: the next command
    finds getty's prompt, logs in again, and runs; nothing else is typed
    into the login prompt."""
    log = tmp_path / "attempts"
    c = spawn_fake("--openeuler", "--tmout", "1", "--welcome-delay", "0.2", "--attempts", str(log))
    c.login("root", "bridgelab", timeout=20)
    assert c.run("echo one; (exit 2)") == (2, "one\n")
    time.sleep(1.5)  # the shell logs itself out
    assert c.run("echo two; (exit 3)") == (3, "two\n") and c.relogins == 1
    c.child.send("exit\r")  # someone ends the session on an attached console
    time.sleep(0.3)
    assert c.check("echo three") == "three\n" and c.relogins == 2
    assert _attempts(log) == ["user root", "password", "logout"] * 2 + ["user root", "password"]


def test_openeuler_login_quirks_do_not_confuse_the_login(spawn_fake, tmp_path):
    """The banner twice, "Last failed login" and "There was 1 failed login
    attempt" lines, a coloured welcome script that is slow."""
    c = spawn_fake("--openeuler", "--welcome-delay", "0.5")
    c.child.expect("login: ")
    c.child.send("root\r")
    c.child.expect("Password: ")
    c.child.send("wrong\r")  # someone else's failed attempt, reported at the next login
    c.login("root", "bridgelab", timeout=30)
    assert c.run("echo ok") == (0, "ok\n")
    c.transcript.flush()
    text = Path(c.transcript.name).read_text()
    assert "There was 1 failed login attempt" in text and text.count("Authorized users only") >= 4


def test_a_login_that_login1_timed_out_is_tried_again(spawn_fake, tmp_path):
    """login(1) gives up after LOGIN_TIMEOUT when the guest is starved of
    CPU: that is the host's load, not a wrong password, so the next prompt
    is answered again, and a guest that keeps timing out says so."""
    log = tmp_path / "attempts"
    c = spawn_fake("--login-times-out", "2", "--attempts", str(log))
    c.login("root", "bridgelab", timeout=30)
    assert c.run("echo ok") == (0, "ok\n")
    assert _attempts(log) == ["user root", "password"] * 3
    c.transcript.flush()
    assert Path(c.transcript.name).read_text().count("login(1) timed out") == 2

    stuck = spawn_fake("--login-times-out", "1000")
    with pytest.raises(ConsoleTimeout, match=r"login\(1\) timed out \d+ times"):
        stuck.login("root", "bridgelab", timeout=3)


def test_nothing_is_typed_between_the_user_name_and_a_slow_password_prompt(spawn_fake, tmp_path):
    """On a busy host login(1) may take longer than the idle period to ask
    for the password; a newline sent then would be read as the password."""
    log = tmp_path / "attempts"
    c = spawn_fake("--slow-login", "2", "--attempts", str(log))
    c.login("root", "bridgelab", timeout=30, idle=0.5)
    assert c.run("echo ok") == (0, "ok\n")
    assert _attempts(log) == ["user root", "password"]


def test_the_login_prompt_can_be_left_for_later(spawn_fake, tmp_path):
    """wait_for_login_prompt boots to getty and types nothing; the login
    that follows answers that prompt without waiting for another."""
    log = tmp_path / "attempts"
    c = spawn_fake("--attempts", str(log))
    prompts = []
    c.wait_for_login_prompt("root", "bridgelab", 20, on_login_prompt=lambda: prompts.append(1))
    assert prompts == [1] and _attempts(log) == []
    time.sleep(0.5)  # nothing is typed while the caller waits
    assert _attempts(log) == []
    t = time.monotonic()
    c.login("root", "bridgelab", timeout=20, idle=5)
    assert time.monotonic() - t < 4, "the prompt left open is answered, not waited for again"
    assert c.run("echo ok") == (0, "ok\n") and _attempts(log) == ["user root", "password"]

    # A command asked for while the prompt waits logs in first, at that prompt.
    later = spawn_fake("--attempts", str(tmp_path / "later"))
    later.wait_for_login_prompt("root", "bridgelab", 20)
    assert later.at_login_prompt
    assert later.run("echo first") == (0, "first\n") and later.relogins == 0 and not later.at_login_prompt
    assert _attempts(tmp_path / "later") == ["user root", "password"]


def test_a_restored_console_at_a_login_prompt_can_be_left_there(spawn_fake, tmp_path):
    """A guest its agent made ready was saved at getty's prompt: taking it
    over leaves that prompt for a later login, unless asked to log in."""
    log = tmp_path / "attempts"
    c = spawn_fake("--attempts", str(log))
    assert c.resume("root", "bridgelab", 20, log_in=False) is False
    assert c.at_login_prompt and _attempts(log) == []
    assert c.resume("root", "bridgelab", 20) is True
    assert c.run("echo ok") == (0, "ok\n") and _attempts(log) == ["user root", "password"]


def test_a_refused_password_is_never_sent_again(spawn_fake, tmp_path):
    log = tmp_path / "attempts"
    c = spawn_fake("--password", "other", "--lockout", "60", "--attempts", str(log))
    with pytest.raises(LoginIncorrect, match="not tried again"):
        c.login("root", "bridgelab", timeout=30)
    with pytest.raises(LoginIncorrect):
        c.run("echo never")
    with pytest.raises(LoginIncorrect):
        c.login("root", "bridgelab", timeout=30)
    assert not c.try_send_and_forget("systemctl poweroff")
    assert _attempts(log) == ["user root", "password"]


def test_poweroff_after_an_idle_logout_logs_in_first(spawn_fake, tmp_path):
    log = tmp_path / "attempts"
    c = spawn_fake("--tmout", "1", "--attempts", str(log))
    c.login("root", "bridgelab", timeout=20)
    time.sleep(1.5)
    assert c.try_send_and_forget("echo powering-off", timeout=20)
    c.child.expect("powering-off")
    assert _attempts(log) == ["user root", "password", "logout", "user root", "password"]


def test_keys_are_held_from_a_reset_until_the_boot_is_past_the_firmware():
    now = [0.0]
    guard = FirmwareGuard(clock=lambda: now[0])
    assert guard.keys_safe()
    guard.expect_reset()
    assert not guard.keys_safe()
    guard.saw("firmware")
    now[0] = 5.0
    assert not guard.keys_safe()
    guard.saw("kernel")
    assert guard.keys_safe()
    guard.saw("firmware")  # a reboot from inside the guest
    guard.saw("userspace")
    assert guard.keys_safe()
    guard.expect_reset()  # a firmware that prints no marker: probes come back after the limit
    now[0] += HOLD_LIMIT + 1
    assert guard.keys_safe()


def test_the_stopped_autoboot_pattern_matches_u_boots_prompt_only():
    stopped = "Hit any key to stop autoboot:  2 \b\b\b 0 \r\n=> "
    ran_out = ("Hit any key to stop autoboot:  2 \b\b\b 1 \b\b\b 0 \r\n\r\nDevice 0: QEMU VirtIO Block Device\r\n"
               "append: root=/dev/vda rw console=ttyS0 quiet\r\nStarting kernel ...\r\n[    0.1] x => y\r\n")
    assert re.search(UBOOT_STOPPED, stopped)
    assert not re.search(UBOOT_STOPPED, ran_out)
