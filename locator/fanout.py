"""Alert fan-out: one XSUB/XPUB proxy between many publishers and many subscribers.

Each regional locator (a city shards by geography: one locator per district, its
sensors plus a ring of its neighbours' so shots on a border are heard by both) publishes
on its own PUB socket. ``shotnet fanout`` connects an XSUB to every one of them and binds
an XPUB that consoles, camera hubs and CAD bridges subscribe to; subscriptions flow
upstream, so a console that wants only ``cap`` gets only ``cap``. The proxy is
ZeroMQ's own (``zmq.proxy``), stateless: run two behind a load balancer for redundancy.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

import zmq


class Fanout:
    def __init__(self, upstream: list[str], bind: str, ctx: zmq.Context | None = None):
        self.ctx = ctx or zmq.Context.instance()
        self.xsub = self.ctx.socket(zmq.XSUB)
        self.xsub.setsockopt(zmq.LINGER, 0)
        for ep in upstream:
            self.xsub.connect(ep)
        self.xpub = self.ctx.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.LINGER, 0)
        self.xpub.bind(bind)
        self.endpoint = self.xpub.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._ctl = self.ctx.socket(zmq.PAIR)
        self._ctl_ep = f"inproc://fanout-{id(self)}"
        self._ctl.bind(self._ctl_ep)
        self.thread = threading.Thread(target=self._run, name="fanout", daemon=True)

    def _run(self) -> None:
        ctl = self.ctx.socket(zmq.PAIR)
        ctl.connect(self._ctl_ep)
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, ctl)
        except zmq.ContextTerminated:
            pass
        finally:
            ctl.close(0)

    def start(self) -> "Fanout":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._ctl.send(b"TERMINATE")
        self.thread.join(timeout=5)
        for s in (self._ctl, self.xsub, self.xpub):
            s.close(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet fanout", description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", action="append", required=True, help="a locator's PUB endpoint (repeatable)")
    ap.add_argument("--bind", default="tcp://127.0.0.1:5570", help="XPUB endpoint for subscribers")
    args = ap.parse_args(argv)
    f = Fanout(args.upstream, args.bind).start()
    print(json.dumps({"ready": True, "bind": f.endpoint, "upstream": args.upstream}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    f.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
