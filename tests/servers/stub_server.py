"""A small real HTTP server standing in for a model server in supervision tests.

Modes: ok (healthy at once), slow (healthy after --delay s, logging meanwhile), exit (exits 3
before serving), stall (never healthy, never logs), lying (/health 200 but completions 500),
child-sigill (a worker child dies of a real SIGILL; the server logs shutdown chatter and
exits 0, as vLLM's API server does), sigill-unless-safe (child-sigill unless ``--kernel
safe``: a fast kernel this "host" cannot run), busy (the first /health answers at once, every
later one after --health-delay s: a server busy serving requests), deaf (after the first
/health it closes its listening socket and stays alive: a live process that answers nothing).
``--children`` spawns a grandchild in the group and one in its own session (vLLM-like).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if sys.argv[1:2] == ["worker"]:  # the child of child-sigill: "loads", then faults
    print("worker: loading kernels", flush=True)
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGILL)

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--mode", default="ok")
parser.add_argument("--delay", type=float, default=0.0)
parser.add_argument("--children", action="store_true")
parser.add_argument("--kernel", default="")
parser.add_argument("--health-delay", type=float, default=3.0)
args = parser.parse_args()

if args.mode == "child-sigill" or (args.mode == "sigill-unless-safe" and args.kernel != "safe"):
    print(f"stub: starting a worker with kernel {args.kernel or '-'}", flush=True)
    subprocess.run([sys.executable, __file__, "worker"], check=False)
    for n in range(40):  # what a dying engine prints after the real error
        print(f"stub: shutdown chatter {n}", flush=True)
    sys.exit(0)

if args.mode == "exit":
    print("stub: failing on purpose: missing weights", flush=True)
    sys.exit(3)
if args.children:
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    subprocess.Popen(sleeper)
    subprocess.Popen(sleeper, start_new_session=True)
if args.mode == "stall":
    time.sleep(600)
ready_at = time.monotonic() + args.delay
health_calls: list[float] = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a: object) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health" and args.mode in ("busy", "deaf"):
            health_calls.append(time.monotonic())
            if args.mode == "busy" and len(health_calls) > 1:
                time.sleep(args.health_delay)
            self._send(200, {"status": "ok"})
            if args.mode == "deaf":  # stop listening (from another thread: serve_forever waits)
                threading.Thread(target=lambda: (server.shutdown(), server.server_close()),
                                 daemon=True).start()
        elif self.path == "/health":
            ok = time.monotonic() >= ready_at
            self._send(200 if ok else 503, {"status": "ok" if ok else "loading"})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        key = os.environ.get("OWLLM_API_KEY")  # as OWLLM's servers do: a key, when given
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._send(401, {"error": {"message": "missing or wrong API key"}})
        elif args.mode == "lying":
            self._send(500, {"error": {"message": "engine dead"}})
        else:
            self._send(200, {"choices": [{"text": "hi", "index": 0}]})


server = ThreadingHTTPServer((args.host, args.port), Handler)
print(f"stub: listening on {args.port}", flush=True)
while time.monotonic() < ready_at:
    print("stub: loading...", flush=True)
    time.sleep(0.2)
server.serve_forever()
if args.mode == "deaf":  # alive, listening on nothing
    time.sleep(600)
