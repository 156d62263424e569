// Clients that stay connected while the Rust test breaks Machines.
// Reads one JSON command a line on stdin, answers one JSON report a line:
//   {"cmd":"settle","avoid":[ids],"timeoutMs":n}  wait until every client is
//       connected, upgraded, and not on an `avoid` Machine;
//   {"cmd":"bounce","on":[ids]|null}  drop the connection of the clients on
//       those Machines (all when null), as a network blip does; socket.io's
//       own reconnect then runs; then settle as above;
//   {"cmd":"exit"}.
// Every report lists, per client, the Machine (`whoami`, and 3 `echo` acks
// that must agree), its reconnects and the errors seen so far.
//
//   node faults.mjs --url http://127.0.0.1:PORT [--clients 30]
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []),
);
const url = args.url;
const count = Number(args.clients ?? 30);

const sessionUnknown = (err) =>
  String(err?.context?.responseText ?? err?.message ?? "").includes("Session ID unknown");

const clients = Array.from({ length: count }, () => {
  const c = { connects: 0, connectErrors: 0, sessionUnknown: 0, machine: null };
  c.socket = io(url, {
    forceNew: true,
    withCredentials: true,
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
  });
  c.socket.on("connect", () => {
    c.connects += 1;
  });
  c.socket.on("connect_error", (err) => {
    c.connectErrors += 1;
    if (sessionUnknown(err)) c.sessionUnknown += 1;
  });
  c.socket.on("disconnect", (_reason, details) => {
    if (sessionUnknown(details)) c.sessionUnknown += 1;
  });
  return c;
});

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

// Where a client is now, or null when it is not usable yet.
async function probe(c) {
  const s = c.socket;
  if (!s.connected || s.io.engine?.transport?.name !== "websocket") return null;
  try {
    const me = await s.timeout(2000).emitWithAck("whoami");
    for (let k = 0; k < 3; k++) {
      const reply = await s.timeout(2000).emitWithAck("echo", `probe-${k}`);
      if (reply !== `${me}:probe-${k}`) return { machine: me, mismatch: reply };
    }
    return { machine: me };
  } catch {
    return null;
  }
}

async function settle(avoid, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  const where = new Array(count).fill(null);
  for (;;) {
    await Promise.all(
      clients.map(async (c, i) => {
        const p = await probe(c);
        where[i] = p && !avoid.includes(p.machine) ? p : null;
      }),
    );
    if (where.every(Boolean) || Date.now() > deadline) break;
    await sleep(100);
  }
  return {
    settled: where.every(Boolean),
    clients: clients.map((c, i) => ({
      machine: where[i]?.machine ?? null,
      mismatch: where[i]?.mismatch ?? null,
      connects: c.connects,
      connectErrors: c.connectErrors,
      sessionUnknown: c.sessionUnknown,
    })),
  };
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const cmd = JSON.parse(line);
  if (cmd.cmd === "exit") break;
  if (cmd.cmd === "bounce") {
    const on = cmd.on;
    for (const c of clients) {
      if (on === null || on.includes(c.machine)) c.socket.io.engine.close();
    }
    await sleep(50);
  }
  const report = await settle(cmd.avoid ?? [], cmd.timeoutMs ?? 15000);
  report.clients.forEach((r, i) => {
    if (r.machine) clients[i].machine = r.machine;
  });
  console.log(JSON.stringify(report));
}
for (const c of clients) c.socket.disconnect();
process.exit(0);
