// Real-browser end-to-end tests: headless Chromium (Debian's /usr/bin/chromium,
// never a downloaded browser) driven by playwright-core, against each example's
// release binary as 3 Machines behind the flysim binary. Run by `cargo xtask
// browser`, which starts one flysim cluster per framework and passes
//   --target <framework>,<front url>,<admin url>   (once per cluster)
//   --out <dir>                                    (screenshots)
// Every check prints one line; any failure makes the exit status 1.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    target: { type: "string", multiple: true, default: [] },
    out: { type: "string", default: "screenshots" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
  },
});

const PIN = "fly-machine-id";
const UPLOAD_BYTES = 2 * 1024 * 1024;
// How long to wait for something the page or the cluster should do. A bound
// on failure, never a measurement: nothing here asserts how fast anything is.
const PATIENCE_MS = 15_000;

class Failure extends Error {}

/** One framework's checks: each passing one prints a line. */
class Checks {
  constructor(framework) {
    this.framework = framework;
    this.passed = 0;
  }

  ok(cond, what, detail = "") {
    if (!cond) throw new Failure(`${what}${detail ? `: ${detail}` : ""}`);
    this.passed += 1;
    console.log(`  ok    ${this.framework}: ${what}${detail ? ` (${detail})` : ""}`);
  }

  eq(got, want, what) {
    this.ok(got === want, what, got === want ? String(got) : `got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

async function waitFor(fn, what, ms = PATIENCE_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Failure(`gave up waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function admin(base, method, path) {
  const res = await fetch(`${base}${path}`, { method });
  const body = await res.json();
  return { status: res.status, body };
}

async function machines(base) {
  return (await admin(base, "GET", "/machines")).body;
}

/** The Machine ID a page of /app says served it. */
async function servedBy(page) {
  return (await page.textContent("#machine")).trim();
}

async function pinOf(context, front) {
  return (await context.cookies(front)).find((c) => c.name === PIN);
}

const short = (id) => String(id).slice(0, 6);

/** Loads /app, failing on anything but a 200 page of this app. */
async function load(page, front, check, what) {
  const res = await page.goto(`${front}/app`);
  check.ok(res && res.status() === 200 && (await page.$("#machine")) !== null, what, res ? `HTTP ${res.status()}` : "no response");
  return servedBy(page);
}

async function reload(page) {
  const res = await page.reload();
  if (!res || res.status() !== 200 || (await page.$("#machine")) === null) {
    throw new Failure(`reload answered ${res ? `HTTP ${res.status()}` : "nothing"}: ${(await page.textContent("body")).slice(0, 200)}`);
  }
  return servedBy(page);
}

/** Connects the page's WebSocket in `mode`, sends `text`, returns the echo's Machine and the URL used. */
async function echo(page, mode, text) {
  const opened = page.waitForEvent("websocket", { timeout: PATIENCE_MS });
  await page.selectOption("#ws-mode", mode);
  await page.click("#ws-connect");
  const socket = await opened;
  await waitFor(async () => (await page.textContent("#ws-status")).startsWith("connected"), `the ${mode} WebSocket to open`);
  await page.fill("#ws-text", text);
  await page.click("#ws-send");
  const line = await waitFor(async () => {
    const lines = await page.$$eval("#ws-log li", (lis) => lis.map((li) => li.textContent));
    return lines.find((l) => l.includes(`:${text} `));
  }, `the echo of ${text}`);
  return { machine: line.split(":")[0], url: socket.url() };
}

async function dashboardRow(dash, id) {
  return dash.$(`tr[data-id="${id}"]`);
}

async function rowState(dash, id) {
  const row = await dashboardRow(dash, id);
  return row ? row.getAttribute("data-state") : null;
}

async function press(dash, id, action) {
  await dash.click(`tr[data-id="${id}"] button[data-action="${action}"]`);
}

async function errorText(dash) {
  return dash.evaluate(() => {
    const box = document.querySelector("#error");
    return box.classList.contains("shown") ? box.textContent : "";
  });
}

/** The states of every Machine, to see that a refused action changed nothing. */
async function states(base) {
  return JSON.stringify((await machines(base)).map((m) => [m.id, m.state, m.draining]));
}

async function run(browser, framework, front, adminUrl, out) {
  const check = new Checks(framework);
  const shot = async (page, name) => {
    // Clicks may have scrolled the page; the picture starts at its top left.
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: join(out, `${framework}-${name}.png`) });
  };
  const contexts = [];
  const context = async (viewport = { width: 900, height: 760 }) => {
    const c = await browser.newContext({ viewport, deviceScaleFactor: 1 });
    contexts.push(c);
    return c;
  };
  let alicePage = null;
  try {
    // --- the pin cookie -----------------------------------------------------
    const alice = await context();
    alicePage = await alice.newPage();
    const home = await load(alicePage, front, check, "GET /app is a page");
    const pin = await pinOf(alice, front);
    check.ok(pin !== undefined, "the browser stored the pin cookie", pin && `${PIN}=${pin.value}`);
    check.eq(pin.value, home, "the pin names the Machine that served the page");
    check.eq(pin.httpOnly, true, "the pin is HttpOnly");
    check.eq(pin.sameSite, "Lax", "the pin is SameSite=Lax");
    check.eq(pin.secure, true, "the pin is Secure (flysim sends X-Forwarded-Proto: https)");
    check.ok((await alicePage.textContent("#cookie-note")).includes("HttpOnly"), "the page's script cannot read the pin");

    // --- reloads stay home --------------------------------------------------
    const receivedBefore = (await machines(adminUrl)).find((m) => m.id === home).replays_received;
    const landed = [];
    for (let i = 0; i < 6; i++) landed.push(await reload(alicePage));
    check.ok(landed.every((m) => m === home), "6 reloads all served by the home Machine", landed.map(short).join(" "));
    const receivedAfter = (await machines(adminUrl)).find((m) => m.id === home).replays_received;
    check.ok(receivedAfter > receivedBefore, "flysim balanced some reloads elsewhere and they were replayed home", `${receivedAfter - receivedBefore} replays received`);
    const handled = Number((await alicePage.textContent("#handled")).trim());
    check.ok(handled >= 7, "the page shows the home Machine's handler count", `handled=${handled}`);

    // --- WebSocket: with ?fly_instance_id= and with the cookie alone ---------
    for (const mode of ["query", "cookie"]) {
      const got = [];
      for (let i = 0; i < 3; i++) {
        const { machine, url } = await echo(alicePage, mode, `${mode}-${i}`);
        const hasQuery = new URL(url).searchParams.get("fly_instance_id");
        if (mode === "query") check.eq(hasQuery, home, `WebSocket ${i + 1}/3 asked for ?fly_instance_id= of the page's Machine`);
        else check.eq(hasQuery, null, `WebSocket ${i + 1}/3 carried no query, only the cookie`);
        got.push(machine);
      }
      check.ok(got.every((m) => m === home), `3 WebSocket echoes (${mode}) came from the home Machine`, got.map(short).join(" "));
    }

    // --- a 2 MB fetch upload --------------------------------------------------
    await alicePage.setInputFiles("#file", {
      name: "2mb.bin",
      mimeType: "application/octet-stream",
      buffer: Buffer.alloc(UPLOAD_BYTES, 0x61),
    });
    await alicePage.click("#upload");
    const uploaded = await waitFor(async () => {
      const t = await alicePage.textContent("#upload-result");
      return t.startsWith("HTTP ") && t;
    }, "the upload's answer");
    check.ok(uploaded.startsWith("HTTP 200") && uploaded.includes(`bytes=${UPLOAD_BYTES}`), "a 2 MB fetch upload was served whole", uploaded);
    await shot(alicePage, "page");
    check.eq((await pinOf(alice, front)).value, home, "the pin is unchanged after the upload");

    // --- a second browser profile is pinned on its own ------------------------
    let bob;
    let bobPage;
    let bobHome;
    for (let tries = 0; tries < 3; tries++) {
      bob = await context();
      bobPage = await bob.newPage();
      bobHome = await load(bobPage, front, check, `a second browser context gets the page (try ${tries + 1})`);
      if (bobHome !== home) break;
    }
    check.ok(bobHome !== home, "the second context landed on another Machine", short(bobHome));
    check.eq((await pinOf(bob, front)).value, bobHome, "the second context has its own pin");
    const bobLanded = [];
    for (let i = 0; i < 3; i++) bobLanded.push(await reload(bobPage));
    check.ok(bobLanded.every((m) => m === bobHome), "its reloads stay on its own home", bobLanded.map(short).join(" "));
    check.eq((await pinOf(alice, front)).value, home, "the first context's pin is untouched");

    // --- the dashboard: destroy the home Machine -------------------------------
    const ops = await context({ width: 1240, height: 760 });
    const dash = await ops.newPage();
    const dashRes = await dash.goto(`${adminUrl}/`);
    check.eq(dashRes.status(), 200, "the flysim dashboard loads");
    await waitFor(async () => (await rowState(dash, home)) === "started", "the home Machine's row");
    const rowCount = (await dash.$$("#machines tbody tr")).length;
    check.eq(rowCount, 3, "the dashboard lists the 3 Machines");
    check.eq((await dash.textContent("#front")).trim(), `${front}/`, "the dashboard links the front URL");

    await press(dash, home, "destroy");
    await waitFor(async () => (await rowState(dash, home)) === "destroyed", "the destroyed state on the dashboard");
    check.eq((await machines(adminUrl)).find((m) => m.id === home).state, "destroyed", "the dashboard's destroy button destroyed the home Machine");
    const before = await states(adminUrl);
    await press(dash, home, "destroy");
    const refused = await waitFor(() => errorText(dash), "the dashboard to show the refusal");
    check.ok(refused.includes("409") && refused.includes("is destroyed"), "destroy pressed twice shows the admin API's error", refused);
    check.eq(await states(adminUrl), before, "the refused destroy changed nothing");

    const moved = await reload(alicePage);
    check.ok(moved !== home, "the next reload is served by another Machine, no error page", `${short(home)} -> ${short(moved)}`);
    check.eq((await pinOf(alice, front)).value, moved, "the browser got a new pin");
    const after = [];
    for (let i = 0; i < 3; i++) after.push(await reload(alicePage));
    check.ok(after.every((m) => m === moved), "reloads stay on the new home", after.map(short).join(" "));
    if (bobHome !== moved) {
      check.eq(await reload(bobPage), bobHome, "the second context was not affected");
    } else {
      check.eq((await pinOf(bob, front)).value, bobHome, "the second context's pin was not affected");
    }

    // --- add, stop (twice), start ----------------------------------------------
    const known = new Set((await machines(adminUrl)).map((m) => m.id));
    await dash.click("#add");
    const added = await waitFor(async () => (await machines(adminUrl)).find((m) => !known.has(m.id) && m.state === "started"), "the added Machine");
    await waitFor(async () => (await rowState(dash, added.id)) === "started", "the added Machine's row");
    check.ok(true, "the dashboard's add button started a 4th Machine", short(added.id));
    await press(dash, added.id, "stop");
    await waitFor(async () => (await rowState(dash, added.id)) === "stopped", "the stopped state");
    const beforeStop = await states(adminUrl);
    await press(dash, added.id, "stop");
    const stopTwice = await waitFor(async () => {
      const t = await errorText(dash);
      return t.includes("not running") && t;
    }, "the second stop's refusal");
    check.ok(stopTwice.includes("409"), "stop pressed twice shows the admin API's error", stopTwice);
    check.eq(await states(adminUrl), beforeStop, "the refused stop changed nothing");
    await press(dash, added.id, "start");
    await waitFor(async () => (await rowState(dash, added.id)) === "started", "the started state");
    check.eq(await errorText(dash), "", "start works and clears the error");

    // --- drain the new home: its browser moves ---------------------------------
    await press(dash, moved, "drain");
    await waitFor(async () => (await rowState(dash, moved)) === "draining", "the draining state");
    check.ok(true, "the dashboard's drain button sent SIGTERM: the Machine is draining", short(moved));
    await press(dash, moved, "drain");
    const drainTwice = await waitFor(async () => {
      const t = await errorText(dash);
      return t.includes("already draining") && t;
    }, "the second drain's refusal");
    check.ok(drainTwice.includes("409"), "drain pressed twice shows the admin API's error", drainTwice);
    // A draining Machine serves what was already replayed to it (decision
    // row 5: never replay twice) and replays elsewhere what lands on it
    // directly; round-robin over 3 live Machines lands a reload there within 3.
    const drainLanded = [];
    let drainedTo = moved;
    while (drainedTo === moved && drainLanded.length < 6) {
      drainedTo = await reload(alicePage);
      drainLanded.push(drainedTo);
    }
    check.ok(drainedTo !== moved, "the drained Machine's browser moved", `${short(moved)} -> ${short(drainedTo)} on reload ${drainLanded.length}: ${drainLanded.map(short).join(" ")}`);
    check.eq((await pinOf(alice, front)).value, drainedTo, "and was pinned to its new home");
    check.eq(await reload(alicePage), drainedTo, "where it stays");

    const stamp = await dash.textContent("#updated");
    await waitFor(async () => (await dash.textContent("#updated")) !== stamp, "the dashboard's next poll");
    const events = await dash.$$eval("#events li", (lis) => lis.length);
    check.ok(events > 0, "the dashboard lists recent events", `${events} shown`);
    await shot(dash, "dashboard");
    await shot(alicePage, "moved");
    return { framework, passed: check.passed, failed: null };
  } catch (e) {
    const message = e instanceof Failure ? e.message : `${e.stack || e}`;
    console.log(`  FAIL  ${framework}: ${message}`);
    if (alicePage) await alicePage.screenshot({ path: join(out, `${framework}-failure.png`) }).catch(() => {});
    return { framework, passed: check.passed, failed: message };
  } finally {
    for (const c of contexts) await c.close().catch(() => {});
  }
}

mkdirSync(args.out, { recursive: true });
const targets = args.target.map((t) => {
  const [framework, front, adminUrl] = t.split(",");
  if (!framework || !front || !adminUrl) throw new Error(`--target ${t}: want <framework>,<front url>,<admin url>`);
  return { framework, front: front.replace(/\/$/, ""), adminUrl: adminUrl.replace(/\/$/, "") };
});
if (targets.length === 0) {
  console.error("usage: node e2e.mjs --target <framework>,<front url>,<admin url> [--target ...] [--out dir]");
  process.exit(2);
}

const browser = await chromium.launch({ executablePath: args.chromium, headless: true });
console.log(`browser: ${args.chromium} (Chromium ${browser.version()}), playwright-core`);
const results = [];
for (const { framework, front, adminUrl } of targets) {
  console.log(`\n${framework}: ${front}/app behind flysim (dashboard ${adminUrl}/)`);
  results.push(await run(browser, framework, front, adminUrl, args.out));
}
await browser.close();

console.log("\nsummary");
for (const r of results) {
  console.log(`  ${r.failed ? "FAIL" : "ok  "}  ${r.framework}: ${r.passed} checks passed${r.failed ? `, then: ${r.failed}` : ""}`);
}
process.exit(results.some((r) => r.failed) ? 1 : 0);
