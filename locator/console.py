"""``shotnet console``: the dispatcher's live web page (Starlette, served by uvicorn).

Fed by the locator's PUB feed (``evt`` events, ``inc`` incidents, ``hlt`` node health)
and the camera hub's (``cue``), and by the locator's SQLite store (history, clips). Works
offline: the page, its script and the map are served from here; the map is SVG drawn
from GeoJSON layers (sensors with their health, cameras, incidents with their 95%
ellipses, optional streets and buildings).

- Live: new incidents and updates arrive by server-sent events (``/api/stream``) within
  a second of publication, with an audible cue (Web Audio, no sound file).
- Detail: time, coordinates, ellipse, rounds, automatic and multiple-shooter flags,
  confidence, sensors, the clip's waveform and spectrogram, audio playback, the cued
  cameras and their stream links, and the incident's audit history.
- Review: confirm, dismiss or relabel; each action goes to the hash-chained audit log
  and into the labelled-data export (``/api/export/labels.jsonl``) for retraining.
- Security: sign-in against a users file (PBKDF2-SHA256 password hashes; roles
  ``dispatcher`` and ``supervisor``), signed session cookies that expire
  (``session_ttl_s``, SameSite=Strict, HttpOnly), a per-session CSRF token required on
  every POST, and the request's Origin checked against the host. Without a session
  every page and API answers 401 (or redirects to the sign-in page).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import sqlite3
import sys
import threading
import time
import tomllib
import wave
from pathlib import Path

import numpy as np

from shotnet.sensor.layout import SensorLayout

from .audit import AuditLog

log = logging.getLogger(__name__)

ROLES = ("dispatcher", "supervisor")
RELABELS = ("gunshot", "firework", "backfire", "slam", "construction", "clap", "pop", "other")


# ---------------------------------------------------------------------- users
def hash_password(password: str, salt: bytes | None = None, rounds: int = 200_000) -> str:
    salt = salt or secrets.token_bytes(16)
    dk = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)
    return f"pbkdf2_sha256${rounds}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        algo, rounds, salt, dk = stored.split("$")
        if algo != "pbkdf2_sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(rounds))
        return hmac.compare_digest(got, base64.b64decode(dk))
    except (ValueError, TypeError):
        return False


def load_users(path: str | Path) -> dict[str, dict]:
    """users.toml: ``[[user]]`` with ``name``, ``role`` and ``password_hash``."""
    doc = tomllib.loads(Path(path).read_text())
    users = {}
    for i, u in enumerate(doc.get("user", [])):
        unknown = set(u) - {"name", "role", "password_hash"}
        if unknown or not {"name", "role", "password_hash"} <= set(u):
            raise ValueError(f"{path}: user {i}: need name, role, password_hash (unknown: {sorted(unknown)})")
        if u["role"] not in ROLES:
            raise ValueError(f"{path}: user {u['name']!r}: role must be one of {ROLES}")
        users[u["name"]] = u
    return users


# ---------------------------------------------------------------------- state
class ConsoleState:
    """What the page shows, kept current from the feeds (thread-safe)."""

    def __init__(self, layout: SensorLayout | None, store_path: str | None, audit: AuditLog,
                 cameras: list | None = None, layers: dict | None = None, reviews_path: str | None = None):
        self.layout = layout
        self.store_path = store_path
        self.audit = audit
        self.cameras = cameras or []
        self.layers = layers or {}
        self.lock = threading.Lock()
        self.incidents: dict[str, dict] = {}     # incident_id -> summary
        self.events: dict[str, dict] = {}        # event_id -> latest event
        self.health: dict[str, dict] = {}        # sensor_id -> {"status", "reasons"}
        self.cues: dict[str, list] = {}          # incident_id -> cue messages
        self.reviews: dict[str, dict] = {}
        self.subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self.reviews_db = sqlite3.connect(reviews_path or ":memory:", check_same_thread=False, isolation_level=None)
        self.reviews_db.execute("CREATE TABLE IF NOT EXISTS reviews (incident_id TEXT PRIMARY KEY, body TEXT)")
        for iid, body in self.reviews_db.execute("SELECT incident_id, body FROM reviews"):
            self.reviews[iid] = json.loads(body)
        self.store = None               # the locator's store, read for history and clips
        if store_path:
            from .store import Store

            self.store = Store(store_path)
            self._load_store()

    def _load_store(self, since_s: float = 24 * 3600) -> None:
        since = time.time_ns() - int(since_s * 1e9)
        for ev in self.store.events(since):
            self.events[ev.event_id] = ev.to_dict()
        for inc in self.store.incidents(since):
            self.incidents[inc["incident_id"]] = inc

    def publish(self, kind: str, body: dict) -> None:
        msg = json.dumps({"kind": kind, "body": body})
        for loop, q in list(self.subscribers):
            loop.call_soon_threadsafe(q.put_nowait, msg)

    def on_message(self, topic: bytes, body: bytes) -> None:
        try:
            d = json.loads(body)
        except ValueError:
            log.warning("console: malformed %r message", topic)
            return
        with self.lock:
            if topic == b"evt":
                self.events[d["event_id"]] = d
            elif topic == b"inc":
                self.incidents[d["incident_id"]] = d
            elif topic == b"hlt":
                self.health[d["sensor_id"]] = {"status": d["status"], "reasons": d["reasons"]}
            elif topic == b"cue":
                self.cues.setdefault(d["incident_id"], []).append(d)
            else:
                return
        self.publish(topic.decode(), d)

    def snapshot(self) -> dict:
        with self.lock:
            sensors = []
            if self.layout is not None:
                for i, sid in enumerate(self.layout.ids):
                    h = self.health.get(sid, {"status": "unknown", "reasons": []})
                    sensors.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [
                        float(self.layout.lon_deg[i]), float(self.layout.lat_deg[i])]},
                        "properties": {"id": sid, **h}})
            cams = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [c.lon_deg, c.lat_deg]},
                     "properties": {"id": c.camera_id, "kind": c.kind, "consent": c.consent}} for c in self.cameras]
            incs = sorted(self.incidents.values(), key=lambda i: -i["last_t_ns"])
            return {"sensors": {"type": "FeatureCollection", "features": sensors},
                    "cameras": {"type": "FeatureCollection", "features": cams},
                    "incidents": [dict(i, review=self.reviews.get(i["incident_id"])) for i in incs],
                    "events": list(self.events.values()), "layers": self.layers}

    def detail(self, iid: str) -> dict | None:
        with self.lock:
            inc = self.incidents.get(iid)
            if inc is None:
                return None
            evs = [self.events[e] for e in inc["events"] if e in self.events]
            cues = list(self.cues.get(iid, []))
            review = self.reviews.get(iid)
        clips = []
        for ev in evs:
            for key in ev.get("detections", []):
                clips.append(key)
        history = [e for e in self.audit.entries() if e["data"].get("incident_id") == iid]
        return {"incident": inc, "events": evs, "cues": cues, "review": review,
                "clips": clips, "clips_with_audio": self.keys_with_clip(clips), "history": history}

    def keys_with_clip(self, keys: list[str]) -> list[str]:
        have = self.store.keys_with_clip(keys) if self.store is not None else set()
        return [k for k in keys if k in have]

    def clip(self, key: str) -> tuple[np.ndarray, int] | None:
        got = self.store.clip(key) if self.store is not None else None
        if got is None:
            return None
        blob, fs = got
        return np.frombuffer(blob, dtype=np.float16).astype(np.float32), int(fs)

    def review(self, iid: str, action: str, label: str | None, user: str, role: str) -> dict:
        if action not in ("confirm", "dismiss", "relabel"):
            raise ValueError(f"action must be confirm, dismiss or relabel, got {action!r}")
        if action == "relabel" and label not in RELABELS:
            raise ValueError(f"label must be one of {', '.join(RELABELS)}")
        with self.lock:
            inc = self.incidents.get(iid)
            if inc is None:
                raise KeyError(iid)
            final = {"confirm": inc["label"], "dismiss": "dismissed", "relabel": label}[action]
            r = {"incident_id": iid, "action": action, "label": final, "by": user, "role": role,
                 "t_ns": time.time_ns(), "events": list(inc["events"])}
            self.reviews[iid] = r
        self.reviews_db.execute("INSERT OR REPLACE INTO reviews VALUES (?, ?)", (iid, json.dumps(r)))
        self.audit.append("review", f"user:{user}", {k: r[k] for k in ("incident_id", "action", "label", "role")})
        self.publish("review", r)
        return r

    def labels(self) -> list[dict]:
        """Labelled data for retraining: each reviewed round's detections, label and clips."""
        out = []
        with self.lock:
            for iid, r in self.reviews.items():
                for eid in r["events"]:
                    ev = self.events.get(eid)
                    if ev is None:
                        continue
                    out.append({"incident_id": iid, "event_id": eid, "label": r["label"], "reviewed_by": r["by"],
                                "t_ns": ev["t_ns"], "lat": ev["lat"], "lon": ev["lon"],
                                "detections": ev.get("detections", []), "model_label": ev["label"]})
        return out


def clip_wav(x: np.ndarray, fs: int) -> bytes:
    peak = float(np.max(np.abs(x))) or 1.0
    pcm = np.clip(x / peak * 0.9 * 32767, -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(fs)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def clip_png(x: np.ndarray, fs: int, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(x)) / fs - 1.0
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 4.2), sharex=True)
    a.plot(t, x, lw=0.5, color="tab:blue")
    a.set_ylabel("amplitude (FS)")
    a.set_title(title)
    b.specgram(x, NFFT=256, Fs=fs, noverlap=192, cmap="magma", xextent=(t[0], t[-1]))
    b.set_ylabel("Hz")
    b.set_xlabel("s from the onset")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------- the web app
def make_app(state: ConsoleState, users: dict[str, dict], secret_key: str, session_ttl_s: float = 8 * 3600,
             hub_url: str = ""):
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import (HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response,
                                     StreamingResponse)
    from starlette.routing import Route

    from .console_ui import APP_HTML, LOGIN_HTML

    def current(request: Request) -> dict | None:
        s = request.session
        if not s.get("user") or time.time() > s.get("expires", 0) or s["user"] not in users:
            return None
        return {"name": s["user"], "role": s["role"], "csrf": s["csrf"]}

    def denied(request: Request):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "sign in first"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            return True          # same-origin form posts from older agents; the token still applies
        return origin == f"{request.url.scheme}://{request.headers.get('host')}"

    async def csrf_ok(request: Request, user: dict | None, form=None) -> bool:
        token = request.headers.get("x-csrf-token")
        if token is None and form is not None:
            token = form.get("csrf")
        expected = user["csrf"] if user else request.session.get("login_csrf")
        return bool(token and expected and hmac.compare_digest(str(token), str(expected))) and same_origin(request)

    async def login_page(request: Request):
        tok = secrets.token_urlsafe(24)
        request.session["login_csrf"] = tok
        return HTMLResponse(LOGIN_HTML.replace("{{csrf}}", tok).replace("{{error}}", ""))

    async def login(request: Request):
        form = await request.form()
        if not await csrf_ok(request, None, form):
            state.audit.append("denied", "anonymous", {"what": "login without a valid CSRF token"})
            return PlainTextResponse("forbidden: bad or missing CSRF token", status_code=403)
        name, pw = str(form.get("user", "")), str(form.get("password", ""))
        u = users.get(name)
        if u is None or not check_password(pw, u["password_hash"]):
            state.audit.append("denied", f"user:{name}", {"what": "sign-in failed"})
            tok = secrets.token_urlsafe(24)
            request.session["login_csrf"] = tok
            return HTMLResponse(LOGIN_HTML.replace("{{csrf}}", tok).replace("{{error}}", "Wrong name or password."),
                                status_code=401)
        request.session.clear()
        request.session.update({"user": name, "role": u["role"], "csrf": secrets.token_urlsafe(24),
                                "expires": time.time() + session_ttl_s})
        state.audit.append("signin", f"user:{name}", {"role": u["role"]})
        return RedirectResponse("/", status_code=303)

    async def logout(request: Request):
        user = current(request)
        form = await request.form()
        if user is None or not await csrf_ok(request, user, form):
            return PlainTextResponse("forbidden", status_code=403)
        state.audit.append("signout", f"user:{user['name']}", {})
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def index(request: Request):
        user = current(request)
        if user is None:
            return denied(request)
        return HTMLResponse(APP_HTML.replace("{{csrf}}", user["csrf"]).replace("{{user}}", user["name"])
                            .replace("{{role}}", user["role"]).replace("{{hub}}", hub_url))

    async def api_state(request: Request):
        if current(request) is None:
            return denied(request)
        return JSONResponse(state.snapshot())

    async def api_incident(request: Request):
        user = current(request)
        if user is None:
            return denied(request)
        d = state.detail(request.path_params["iid"])
        if d is None:
            return JSONResponse({"error": "no such incident"}, status_code=404)
        state.audit.append("view", f"user:{user['name']}", {"incident_id": request.path_params["iid"]})
        return JSONResponse(d)

    async def api_clip(request: Request):
        user = current(request)
        if user is None:
            return denied(request)
        key, ext = request.path_params["key"], request.path_params["ext"]
        got = state.clip(key)
        if got is None:
            return JSONResponse({"error": "no clip"}, status_code=404)
        x, fs = got
        if ext == "wav":
            state.audit.append("play", f"user:{user['name']}", {"detection": key})
            return Response(clip_wav(x, fs), media_type="audio/wav")
        return Response(clip_png(x, fs, f"clip {key}"), media_type="image/png")

    async def api_review(request: Request):
        user = current(request)
        if user is None:
            return denied(request)
        body = await request.json() if request.headers.get("content-type", "").startswith("application/json") \
            else dict(await request.form())
        if not await csrf_ok(request, user, body):
            state.audit.append("denied", f"user:{user['name']}", {"what": "review without a valid CSRF token"})
            return JSONResponse({"error": "bad or missing CSRF token"}, status_code=403)
        try:
            r = state.review(request.path_params["iid"], str(body.get("action")), body.get("label"), user["name"],
                             user["role"])
        except KeyError:
            return JSONResponse({"error": "no such incident"}, status_code=404)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(r)

    async def api_labels(request: Request):
        user = current(request)
        if user is None:
            return denied(request)
        if user["role"] != "supervisor":
            return JSONResponse({"error": "supervisors only"}, status_code=403)
        rows = state.labels()
        state.audit.append("export", f"user:{user['name']}", {"what": "labels", "rows": len(rows)})
        return PlainTextResponse("".join(json.dumps(r) + "\n" for r in rows), media_type="application/x-ndjson")

    async def api_audit(request: Request):
        user = current(request)
        if user is None:
            return denied(request)
        if user["role"] != "supervisor":
            return JSONResponse({"error": "supervisors only"}, status_code=403)
        return JSONResponse(state.audit.entries()[-500:])

    async def api_stream(request: Request):
        user = current(request)
        if user is None:
            return denied(request)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        sub = (loop, q)
        state.subscribers.append(sub)

        async def gen():
            try:
                yield "retry: 1000\n\n"
                while True:
                    try:
                        msg = await asyncio.wait_for(q.get(), timeout=15)
                        yield f"data: {msg}\n\n"
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                    if time.time() > request.session.get("expires", 0):
                        yield "event: expired\ndata: {}\n\n"
                        return
            finally:
                state.subscribers.remove(sub)

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    routes = [Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
              Route("/logout", logout, methods=["POST"]), Route("/", index),
              Route("/api/state", api_state), Route("/api/stream", api_stream),
              Route("/api/incident/{iid}", api_incident),
              Route("/api/incident/{iid}/review", api_review, methods=["POST"]),
              Route("/api/clip/{key}.{ext:str}", api_clip), Route("/api/export/labels.jsonl", api_labels),
              Route("/api/audit", api_audit)]
    return Starlette(routes=routes, middleware=[
        Middleware(SessionMiddleware, secret_key=secret_key, session_cookie="shotnet_session",
                   max_age=int(session_ttl_s), same_site="strict", https_only=False)])


def feed_thread(state: ConsoleState, endpoints: list[str], stop: threading.Event, ctx=None) -> threading.Thread:
    """Subscribe to the locator (and camera hub) PUB feeds and keep the state current."""
    import zmq

    ctx = ctx or zmq.Context.instance()

    def run():
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        for t in (b"evt", b"inc", b"hlt", b"cue"):
            sub.setsockopt(zmq.SUBSCRIBE, t)
        for ep in endpoints:
            sub.connect(ep)
        while not stop.is_set():
            if sub.poll(100):
                parts = sub.recv_multipart()
                if len(parts) == 2:
                    state.on_message(parts[0], parts[1])
        sub.close(0)

    th = threading.Thread(target=run, name="console-feed", daemon=True)
    th.start()
    return th


class ConsoleServer:
    """uvicorn in a thread (for tests and the CLI)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8080):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout_s: float = 10.0) -> "ConsoleServer":
        self.thread.start()
        end = time.monotonic() + timeout_s
        while not self.server.started and time.monotonic() < end:
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet console", description="The dispatcher console.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    au = sub.add_parser("adduser", help="add (or replace) a user in users.toml")
    au.add_argument("name")
    au.add_argument("--role", choices=ROLES, default="dispatcher")
    au.add_argument("--users", default="users.toml")
    au.add_argument("--password", help="(else read from the SHOTNET_PASSWORD environment variable)")
    run = sub.add_parser("run", help="serve the console")
    run.add_argument("--users", default="users.toml")
    run.add_argument("--sensors", help="sensor layout (GeoJSON)")
    run.add_argument("--cameras", help="camera registry (TOML or GeoJSON)")
    run.add_argument("--store", help="the locator's SQLite store (history and clips)")
    run.add_argument("--feed", action="append", default=[], help="PUB endpoint(s): locator, camera hub")
    run.add_argument("--audit", default="audit.jsonl")
    run.add_argument("--reviews", default="reviews.sqlite")
    run.add_argument("--layer", action="append", default=[], metavar="NAME=FILE.geojson",
                     help="extra map layers, e.g. streets=streets.geojson buildings=b.geojson")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--session-ttl-s", type=float, default=8 * 3600)
    run.add_argument("--hub-url", default="", help="the camera hub's HTTP API, for stream links")
    args = ap.parse_args(argv)
    if args.cmd == "adduser":
        pw = args.password or os.environ.get("SHOTNET_PASSWORD")
        if not pw:
            print("shotnet console adduser: give --password or set SHOTNET_PASSWORD", file=sys.stderr)
            return 2
        p = Path(args.users)
        users = load_users(p) if p.exists() else {}
        users[args.name] = {"name": args.name, "role": args.role, "password_hash": hash_password(pw)}
        p.write_text("".join(f'[[user]]\nname = "{u["name"]}"\nrole = "{u["role"]}"\n'
                             f'password_hash = "{u["password_hash"]}"\n\n' for u in users.values()))
        os.chmod(p, 0o600)
        print(f"{args.name} ({args.role}) in {p}")
        return 0
    try:
        users = load_users(args.users)
        from shotnet.sensor.layout import load_layout

        layout = load_layout(args.sensors) if args.sensors else None
        cams = []
        if args.cameras:
            from .cameras import load_cameras

            cams = load_cameras(args.cameras)
        layers = {}
        for spec in args.layer:
            name, _, f = spec.partition("=")
            layers[name] = json.loads(Path(f).read_text())
    except (OSError, ValueError) as exc:
        print(f"shotnet console: {exc}", file=sys.stderr)
        return 2
    state = ConsoleState(layout, args.store, AuditLog(args.audit), cams, layers, args.reviews)
    stop = threading.Event()
    if args.feed:
        feed_thread(state, args.feed, stop)
    import uvicorn

    app = make_app(state, users, secrets.token_urlsafe(32), args.session_ttl_s, args.hub_url)
    print(json.dumps({"ready": True, "url": f"http://{args.host}:{args.port}/"}), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    stop.set()
    return 0
