// Many official socket.io clients against one URL (flysim's front port).
// Each: connect, N `echo` acks, `whoami`, join a room named after its
// Machine, `say` there and hear itself, then wait for the WebSocket upgrade.
// Prints one JSON summary line on stdout; the Rust tests assert on it.
//
//   node load.mjs --url http://127.0.0.1:PORT [--clients 50] [--echoes 20]
//                 [--mode cookie|query|none] [--transports polling,websocket]
//                 [--deadline-ms 20000]
//
// mode: cookie = withCredentials: true (Node's cookie jar, socket.io-client
// >= 4.8.0); query = no jar, GET /machine first and pass
// `query: { fly_instance_id }`; none = no jar and no query.
import { io } from "socket.io-client";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []),
);
const url = args.url ?? fail("--url is required");
const clients = Number(args.clients ?? 50);
const echoes = Number(args.echoes ?? 20);
const mode = args.mode ?? "cookie";
const transports = (args.transports ?? "polling,websocket").split(",");
const deadlineMs = Number(args["deadline-ms"] ?? 20000);
if (!["cookie", "query", "none"].includes(mode)) fail(`unknown --mode ${mode}`);

function fail(message) {
  console.error(`load.mjs: ${message}`);
  process.exit(2);
}

const sessionUnknown = (err) =>
  String(err?.context?.responseText ?? err?.context?.message ?? err?.message ?? "").includes(
    "Session ID unknown",
  );

const withTimeout = (promise, ms, what) =>
  Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms)),
  ]);

async function runClient(i, deadline) {
  const r = {
    connected: false,
    connectErrors: 0,
    sessionUnknown: 0,
    upgradeErrors: 0,
    disconnects: 0,
    acks: 0,
    machines: new Set(),
    room: false,
    transport: null,
    error: null,
  };
  const left = () => Math.max(1, deadline - Date.now());
  let query;
  if (mode === "query") {
    const res = await fetch(`${url}/machine`);
    query = { fly_instance_id: (await res.text()).trim() };
  }
  const socket = io(url, {
    forceNew: true, // one engine (and cookie jar) per client
    withCredentials: mode === "cookie",
    query,
    transports,
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
  });
  const said = [];
  socket.on("said", (m) => said.push(m));
  socket.on("connect_error", (err) => {
    r.connectErrors += 1;
    if (sessionUnknown(err)) r.sessionUnknown += 1;
  });
  socket.on("disconnect", (reason, details) => {
    if (reason === "io client disconnect") return;
    r.disconnects += 1;
    if (sessionUnknown(details)) r.sessionUnknown += 1;
  });
  socket.io.on("open", () => {
    socket.io.engine.on("upgradeError", (err) => {
      r.upgradeErrors += 1;
      if (sessionUnknown(err)) r.sessionUnknown += 1;
    });
  });
  try {
    await withTimeout(new Promise((ok) => socket.once("connect", ok)), left(), "connect");
    r.connected = true;
    for (let k = 0; k < echoes; k++) {
      const text = `c${i}-${k}`;
      const reply = await socket.timeout(left()).emitWithAck("echo", text);
      const [machine, ...rest] = String(reply).split(":");
      if (rest.join(":") !== text) throw new Error(`echo ${text} came back as ${reply}`);
      r.machines.add(machine);
      r.acks += 1;
    }
    const me = await socket.timeout(left()).emitWithAck("whoami");
    r.machines.add(me);
    const room = `room-${me}`;
    await socket.timeout(left()).emitWithAck("join", room);
    const text = `hello from client ${i}`;
    await socket.timeout(left()).emitWithAck("say", { room, text });
    await withTimeout(
      (async () => {
        while (!said.some((m) => m.from === socket.id && m.text === text && m.room === room)) {
          await new Promise((ok) => setTimeout(ok, 20));
        }
      })(),
      left(),
      "own room message",
    );
    // Everyone heard in this room sits on this client's Machine.
    r.room = said.every((m) => m.machine === me);
    if (transports.includes("websocket") && socket.io.engine.transport.name !== "websocket") {
      await withTimeout(
        new Promise((ok) => socket.io.engine.once("upgrade", ok)),
        Math.min(left(), 10000),
        "upgrade",
      );
    }
    r.transport = socket.io.engine.transport.name;
  } catch (err) {
    r.error = err.message;
    r.transport = socket.io.engine?.transport?.name ?? null;
  } finally {
    socket.disconnect();
  }
  return r;
}

const started = Date.now();
const deadline = started + deadlineMs;
const results = await Promise.all(Array.from({ length: clients }, (_, i) => runClient(i, deadline)));
const sum = (f) => results.reduce((n, r) => n + f(r), 0);
const perMachine = {};
for (const r of results) {
  for (const m of r.machines) perMachine[m] = (perMachine[m] ?? 0) + 1;
}
console.log(
  JSON.stringify({
    mode,
    transports,
    clients,
    echoes,
    connected: sum((r) => r.connected),
    acks: sum((r) => r.acks),
    expectedAcks: clients * echoes,
    oneMachine: sum((r) => r.machines.size === 1),
    roomOk: sum((r) => r.room),
    onWebsocket: sum((r) => r.transport === "websocket"),
    connectErrors: sum((r) => r.connectErrors),
    sessionUnknown: sum((r) => r.sessionUnknown),
    upgradeErrors: sum((r) => r.upgradeErrors),
    disconnects: sum((r) => r.disconnects),
    clientsPerMachine: perMachine,
    errors: results.filter((r) => r.error).map((r) => r.error).slice(0, 5),
    elapsedMs: Date.now() - started,
  }),
);
process.exit(0);
