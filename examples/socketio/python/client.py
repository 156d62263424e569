"""python-socketio's sync client, several at once, against one URL.

Each client: connect (polling, then the WebSocket upgrade; requests keeps
the pin cookie), N `echo` calls, `whoami`, wait for the upgrade. Prints one
JSON summary line; the Rust tests assert on it.

    python client.py URL [CLIENTS] [ECHOES] [DEADLINE_S]
"""

import json
import sys
import threading
import time

import socketio

url = sys.argv[1]
clients = int(sys.argv[2]) if len(sys.argv) > 2 else 10
echoes = int(sys.argv[3]) if len(sys.argv) > 3 else 20
deadline = time.monotonic() + (float(sys.argv[4]) if len(sys.argv) > 4 else 20.0)


def run(i, out):
    r = {"connected": False, "connect_errors": 0, "disconnects": 0, "acks": 0,
         "machines": set(), "transport": None, "error": None}
    sio = socketio.Client(reconnection=False)
    sio.on("disconnect", lambda *_: r.__setitem__("disconnects", r["disconnects"] + 1))
    try:
        while not r["connected"]:
            try:
                sio.connect(url, transports=["polling", "websocket"], wait_timeout=5)
                r["connected"] = True
            except socketio.exceptions.ConnectionError as e:
                r["connect_errors"] += 1
                r["error"] = str(e)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for k in range(echoes):
            text = f"p{i}-{k}"
            reply = sio.call("echo", text, timeout=max(0.1, deadline - time.monotonic()))
            machine, _, echoed = str(reply).partition(":")
            if echoed != text:
                raise RuntimeError(f"echo {text} came back as {reply}")
            r["machines"].add(machine)
            r["acks"] += 1
        r["machines"].add(sio.call("whoami", timeout=5))
        while sio.transport() != "websocket" and time.monotonic() < deadline:
            time.sleep(0.05)
        r["transport"] = sio.transport()
        r["error"] = None
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        r["error"] = f"{type(e).__name__}: {e}"
    finally:
        try:
            # Our own disconnect is not a failure.
            if sio.connected:
                r["disconnects"] -= 1
            sio.disconnect()
        except Exception:  # noqa: BLE001
            pass
    out[i] = r


started = time.monotonic()
results = [None] * clients
threads = [threading.Thread(target=run, args=(i, results)) for i in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({
    "clients": clients,
    "echoes": echoes,
    "connected": sum(r["connected"] for r in results),
    "acks": sum(r["acks"] for r in results),
    "expectedAcks": clients * echoes,
    "oneMachine": sum(len(r["machines"]) == 1 for r in results),
    "onWebsocket": sum(r["transport"] == "websocket" for r in results),
    "connectErrors": sum(r["connect_errors"] for r in results),
    "disconnects": sum(r["disconnects"] for r in results),
    "errors": [r["error"] for r in results if r["error"]][:5],
    "elapsedMs": int((time.monotonic() - started) * 1000),
}), flush=True)
