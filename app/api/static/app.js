// bridgelab's status page: draws the lab from GET /events (server-sent
// events, the whole lab on every change) and opens a guest's consoles over
// the API's websockets. No framework: the DOM, SVG and xterm.js (from a
// package, served under /vendor/xterm).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
let lab = null;
let openConsole = null; // {name, sockets: [], terms: []}

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// ------------------------------------------------------------------ the feed

function connect() {
  const source = new EventSource("/events");
  source.addEventListener("lab", (event) => {
    lab = JSON.parse(event.data);
    render();
  });
  source.onerror = async () => {
    if (source.readyState !== EventSource.CLOSED) return; // the browser reconnects by itself
    const answer = await fetch("/healthz", {credentials: "same-origin"}).catch(() => null);
    if (answer && answer.status === 401) {
      askToken(connect); // a daemon on a non-loopback address: reads need the token too
    } else {
      document.getElementById("readiness").textContent = "daemon unreachable";
      setTimeout(connect, 2000);
    }
  };
}

function render() {
  const h = lab.health;
  document.getElementById("lab-name").textContent = h.lab;
  const up = h.uplink ? `uplink ${h.uplink.mode} via ${h.uplink.interface}` : "no uplink";
  document.getElementById("lab-facts").textContent = `bridge ${h.bridge} · host ${h.address} · ${up}`;
  const ready = lab.guests.length > 0 && lab.guests.every((g) => g.state === "ready");
  const badge = document.getElementById("readiness");
  badge.textContent = ready ? "ready" : lab.guests.some((g) => g.state === "failed") ? "not ready: a guest failed"
    : "starting";
  badge.className = "badge " + (ready ? "state-ready" : "state-booting");
  renderTopology();
  renderGuests();
  renderTimeline();
  renderMesh();
}

// --------------------------------------------------------------- topology

function renderTopology() {
  const svg = document.getElementById("topology");
  const guests = lab.guests;
  const width = Math.max(480, guests.length * 170 + 40);
  const height = lab.health.uplink ? 300 : 220;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const bridgeY = lab.health.uplink ? 120 : 40;
  const bridge = {x: width / 2, y: bridgeY};
  if (lab.health.uplink) {
    const u = lab.health.uplink;
    svg.append(el("svg:line", {x1: bridge.x, y1: 40, x2: bridge.x, y2: bridgeY, class: "link"}));
    svg.append(node("uplink", bridge.x, 40, `uplink ${u.mode}`, u.interface, "uplink"));
  }
  guests.forEach((g, i) => {
    const x = 20 + 85 + i * 170 + (width - 40 - guests.length * 170) / 2;
    const y = bridgeY + 120;
    svg.append(el("svg:line", {x1: bridge.x, y1: bridgeY, x2: x, y2: y, class: "link"}));
    svg.append(node(g.name, x, y, g.name, g.ip, `state-${g.state}`));
  });
  svg.append(node("bridge", bridge.x, bridgeY, lab.health.bridge, lab.health.address, "bridge"));
}

function node(id, x, y, title, detail, cls) {
  const group = el("svg:g", {class: `node ${cls}`, "data-node": id, transform: `translate(${x},${y})`});
  group.append(el("svg:rect", {x: -75, y: -24, width: 150, height: 48, rx: 8}));
  const name = el("svg:text", {y: -4, "text-anchor": "middle", class: "title"});
  name.textContent = title;
  const sub = el("svg:text", {y: 14, "text-anchor": "middle"});
  sub.textContent = detail || "";
  group.append(name, sub);
  return group;
}

// ----------------------------------------------------------------- guests

function renderGuests() {
  const body = document.querySelector("#guests tbody");
  body.replaceChildren(...lab.guests.map((g) => {
    const consoleButton = el("button", {type: "button", "data-console": g.name}, "console");
    consoleButton.addEventListener("click", () => showConsole(g.name));
    const state = el("td", {class: `state state-${g.state}`, title: g.reason || ""}, g.state);
    return el("tr", {"data-guest": g.name},
      el("td", {class: "name"}, g.name), state, el("td", {}, g.arch),
      el("td", {class: "ip"}, `${g.ip}/${g.prefix}`), el("td", {class: "mono"}, g.mac),
      el("td", {class: "mono"}, g.tap), el("td", {class: "mono"}, g.ssh || ""), el("td", {}, consoleButton));
  }));
}

function renderTimeline() {
  const box = document.getElementById("timeline");
  box.replaceChildren(...lab.guests.map((g) => {
    const start = g.timestamps.booting || g.stages.qemu_started;
    const end = g.timestamps.ready || Math.max(...Object.values(g.stages), start + 1);
    const span = Math.max(end - start, 1);
    const bar = el("div", {class: "bar"});
    // In the order they were seen (the API's GuestView.stages names them).
    for (const [stage, seen] of Object.entries(g.stages).sort((a, b) => a[1] - b[1])) {
      const at = seen - start;
      const mark = el("span", {class: "mark", style: `left:${(100 * at / span).toFixed(1)}%`,
                               title: `${stage} at ${at.toFixed(1)} s`});
      mark.textContent = stage.replaceAll("_", " ");
      bar.append(mark);
    }
    const total = g.timestamps.ready ? `${(g.timestamps.ready - start).toFixed(1)} s to ready` : g.state;
    return el("div", {class: "row", "data-timeline": g.name}, el("span", {class: "name"}, g.name), bar,
              el("span", {class: "total"}, total));
  }));
}

function renderMesh() {
  const table = document.getElementById("mesh");
  const targets = [{name: lab.health.bridge, ip: lab.health.address.split("/")[0]},
                   ...lab.guests.map((g) => ({name: g.name, ip: g.ip}))];
  const head = el("tr", {}, el("th", {}, "from \\ to"), ...targets.map((t) => el("th", {}, t.name)));
  const rows = lab.guests.map((g) => el("tr", {"data-mesh": g.name}, el("th", {}, g.name), ...targets.map((t) => {
    if (t.ip === g.ip) return el("td", {class: "self"}, "·");
    const seen = g.mesh[t.ip];
    if (seen === undefined) return el("td", {class: "unknown"}, "–");
    return el("td", {class: seen ? "ok" : "fail"}, seen ? "✓" : "✗");
  })));
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

// ---------------------------------------------------------------- consoles

function socketUrl(path) {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}

function closeConsole() {
  if (!openConsole) return;
  openConsole.sockets.forEach((s) => s.close());
  openConsole.terms.forEach((t) => t.dispose());
  openConsole = null;
  document.getElementById("console").hidden = true;
}

function showConsole(name) {
  closeConsole();
  const note = document.getElementById("console-note");
  document.getElementById("console-name").textContent = name;
  document.getElementById("console").hidden = false;
  if (typeof Terminal === "undefined") {
    note.textContent = "xterm.js is not installed where the daemon looks ($BRIDGELAB_WEB_ASSETS): "
      + "install Debian's libjs-xterm (>= 5), or run tools/web-assets DIR.";
    return;
  }
  note.textContent = "";
  openConsole = {name, sockets: [], terms: []};
  const mine = attach(document.getElementById("terminal"), `/guests/${encodeURIComponent(name)}/terminal`, true);
  attach(document.getElementById("serial"), `/guests/${encodeURIComponent(name)}/console/attach`, false);
  mine.term.focus();
}

function attach(box, path, interactive) {
  box.replaceChildren();
  const term = new Terminal({cursorBlink: interactive, disableStdin: !interactive, rows: interactive ? 24 : 12,
                             scrollback: 2000, convertEol: false});
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  const socket = new WebSocket(socketUrl(path));
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => term.write(new Uint8Array(event.data));
  if (interactive) {
    const encoder = new TextEncoder();
    term.onData((keys) => socket.readyState === WebSocket.OPEN && socket.send(encoder.encode(keys)));
    // A getty prints its prompt once; one Enter brings it back for a viewer who came later.
    socket.onopen = () => socket.send(encoder.encode("\r"));
  }
  socket.onclose = (event) => {
    if (event.code === 4401 && openConsole) {
      const name = openConsole.name;
      closeConsole();
      askToken(() => showConsole(name));
    } else if (event.code >= 4000) {
      document.getElementById("console-note").textContent = event.reason;
    }
  };
  openConsole.sockets.push(socket);
  openConsole.terms.push(term);
  return {term, socket};
}

// ---------------------------------------------------------------- the token

function askToken(then) {
  const dialog = document.getElementById("login");
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  error.textContent = "";
  form.onsubmit = async (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    const answer = await fetch("/session", {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({token: input.value})});
    input.value = ""; // the cookie is what stays, not the token
    if (answer.status === 204) {
      dialog.close();
      then();
    } else {
      error.textContent = answer.status === 401 ? "wrong token" : `refused (${answer.status})`;
    }
  };
  if (!dialog.open) dialog.showModal();
}

document.getElementById("console-close").addEventListener("click", closeConsole);
connect();
