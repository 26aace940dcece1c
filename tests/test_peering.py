"""What peers tell each other, the clashes found in it (pure), and the
runner's gates against a peer's API on loopback (in-process, fake qemu)."""

from __future__ import annotations

import http.server
import ipaddress
import threading

import pytest
from bridgelab.api.schemas import AddGuest, NetworkRequest
from bridgelab.errors import SpecError
from bridgelab.lab import peering
from bridgelab.lab.runner import LabRunner
from bridgelab.lab.states import GuestState
from bridgelab.model.peering import Declaration, PeerGuest, clashes
from bridgelab.model.plan import derive_vni

from .test_runner import Lab, settle, two


def decl(host: str, bridge: str, guests: list[tuple[str, str, str]], **extra: object) -> Declaration:
    base: dict[str, object] = {"lab": "l", "host": host, "bridge": bridge, "bridge_mac": f"02:00:00:00:00:{host[-1]}0",
                               "vni": 7, "port": 4789,
                               "guests": [PeerGuest(name=n, ip=ipaddress.IPv4Address(ip), mac=m, state="ready")
                                          for n, ip, m in guests]}
    return Declaration.model_validate({**base, **extra})


MINE = decl("172.31.0.1", "10.0.0.251/24", [("rv1", "10.0.0.1", "02:00:00:00:01:01")])


def test_distinct_hosts_do_not_clash():
    theirs = decl("172.31.0.2", "10.0.0.252/24", [("rv2", "10.0.0.2", "02:00:00:00:02:02")])
    assert clashes(MINE, theirs) == []


def test_a_shared_address_mac_or_name_names_both_sides_and_the_guest():
    theirs = decl("172.31.0.2", "10.0.0.252/24", [("rv1", "10.0.0.1", "02:00:00:00:01:01")])
    found = clashes(MINE, theirs)
    assert {c.guest for c in found} == {"rv1"}
    assert [c.message for c in found] == [
        "guest rv1 on this host (172.31.0.1) and guest rv1 on peer 172.31.0.2 share the address 10.0.0.1",
        "guest rv1 on this host (172.31.0.1) and guest rv1 on peer 172.31.0.2 share the MAC 02:00:00:00:01:01",
        "guest rv1 on this host (172.31.0.1) and guest rv1 on peer 172.31.0.2 share the name rv1"]


def test_bridge_addresses_and_lab_settings_clash_for_the_whole_lab():
    theirs = decl("172.31.0.2", "10.0.0.251/24", [("rv2", "10.0.0.251", "02:00:00:00:02:02")], vni=8, lab="m")
    found = clashes(MINE, theirs)
    assert all(c.guest is None for c in found)
    text = "\n".join(c.message for c in found)
    assert "peer 172.31.0.2 runs lab 'm', this host (172.31.0.1) lab 'l'" in text
    assert "uses VNI 8 on UDP port 4789, this host (172.31.0.1) VNI 7 on 4789" in text
    assert "both have the bridge address 10.0.0.251" in text
    assert "guest rv2 on peer 172.31.0.2 has 10.0.0.251, this host's bridge address" in text
    other_net = decl("172.31.0.2", "10.1.0.252/24", [])
    assert ["peers share one subnet" in c.message for c in clashes(MINE, other_net)] == [True]


def test_a_guest_on_a_peers_bridge_address_is_that_guests_clash():
    theirs = decl("172.31.0.2", "10.0.0.1/24", [])
    assert [(c.guest, c.message) for c in clashes(MINE, theirs)] == [
        ("rv1", "guest rv1 on this host (172.31.0.1) has 10.0.0.1, the bridge address on peer 172.31.0.2")]


# ---------------------------------------------------------------- the runner's gates, in-process


class PeerAPI:
    """A peer's GET /peering, on a loopback address of its own: its
    declaration, for the right token only."""

    def __init__(self, declaration: Declaration, token: str):
        body = declaration.model_dump_json().encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                ok = self.path == "/peering" and self.headers.get("Authorization") == f"Bearer {token}"
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body if ok else b'{"detail": "no"}')

            def log_message(self, *args: object) -> None:
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def peer_declaring(guests: list[tuple[str, str, str]]) -> Declaration:
    return decl("192.0.2.1", "10.198.101.200/24", guests, lab="t", vni=derive_vni("t"))


def test_a_guest_that_clashes_with_a_peer_fails_before_its_qemu_starts(tmp_path):
    api = PeerAPI(peer_declaring([("x9", "10.198.101.10", "02:00:00:00:09:09")]), "tok-0123456789abcdef")
    try:
        lab = Lab(tmp_path, two(), peer=("127.0.0.2", api.port), peer_token="tok-0123456789abcdef")

        async def scenario(r: LabRunner) -> None:
            await settle(r)
            rv1, rv2 = r.guests["rv1"], r.guests["rv2"]
            assert rv1.state is GuestState.failed and "qemu_started" not in rv1.stages
            assert rv1.reason == ("guest rv1 on this host (127.0.0.1) and guest x9 on peer 192.0.2.1 share the "
                                  "address 10.198.101.10")
            assert rv2.state is GuestState.ready, rv2.reason
            view = r.peers().views[ipaddress.IPv4Address("127.0.0.2")]
            assert view.state == "up" and view.declaration is not None
            # At runtime too: a new address or a new guest the peer holds is refused (422), nothing changes.
            taken = r"and guest x9 on peer 192\.0\.2\.1 share the"
            with pytest.raises(SpecError, match=rf"ip: guest rv2 on this host \(127\.0\.0\.1\) {taken} address"):
                await r.set_network("rv2", NetworkRequest(ip=ipaddress.IPv4Address("10.198.101.10")))
            with pytest.raises(SpecError, match=rf"name: guest x9 on this host \(127\.0\.0\.1\) {taken} name x9"):
                await r.add_guest(AddGuest(name="x9", image="img", ip=ipaddress.IPv4Address("10.198.101.30")))
            assert rv2.plan.ip.ip == ipaddress.IPv4Address("10.198.101.11") and "x9" not in r.guests
        lab.run(scenario)
    finally:
        api.close()


def test_a_peer_refusing_the_token_or_silent_holds_no_guest_back_past_the_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(peering, "PEER_WAIT", 1.0)
    api = PeerAPI(peer_declaring([]), "another-token-0123456789")
    try:
        lab = Lab(tmp_path, two(), peer=("127.0.0.2", api.port), peer_token="tok-0123456789abcdef")

        async def scenario(r: LabRunner) -> None:
            await settle(r)
            assert all(g.state is GuestState.ready for g in r.guests.values())
            view = r.peers().views[ipaddress.IPv4Address("127.0.0.2")]
            assert view.state == "refused" and "BRIDGELAB_TOKEN" in view.detail
        lab.run(scenario)
    finally:
        api.close()
