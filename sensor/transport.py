"""Node -> locator delivery over ZeroMQ: DEALER to ROUTER with application acks.

Every detection goes into the node's :class:`~shotnet.sensor.spool.Spool` (SQLite on
disk in the field, in memory in tests and the demo) *before* it is sent, and leaves it
only when the locator acknowledges its ``seq``. Unacknowledged detections are resent
after ``resend_s``, oldest first, at most ``max_in_flight`` at a time, so a backlog
after an outage drains in order without flooding the locator. Duplicates are harmless:
the locator de-duplicates on the stable key ``sensor_id:seq``.

With CURVE (``curve=CurveKeys(...)``) the connection is encrypted and authenticated: the
locator accepts only registered node keys (see :mod:`shotnet.sensor.keys`).
Heartbeats (``send_heartbeat``) ride the same socket, unacknowledged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import zmq

from .contract import KIND_ACK, KIND_HEARTBEAT, ContractError, Detection, decode, encode
from .spool import Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveKeys:
    """A node's CURVE key pair and the locator's public key (z85 bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, secret_file: str, server_public_file: str) -> "CurveKeys":
        import zmq.auth

        pub, sec = zmq.auth.load_certificate(secret_file)
        if sec is None:
            raise ValueError(f"{secret_file} holds no secret key")
        server_pub, _ = zmq.auth.load_certificate(server_public_file)
        return cls(pub, sec, server_pub)


class DetectionSender:
    """A DEALER connected to the locator's ROUTER, sending from a spool."""

    def __init__(self, endpoint: str, sensor_id: str, ctx: zmq.Context | None = None, resend_s: float = 2.0,
                 spool: Spool | None = None, curve: CurveKeys | None = None, max_in_flight: int = 256):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, sensor_id.encode())
        # Queue at most a little while disconnected: the spool is the real buffer.
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        if curve is not None:
            self.sock.curve_secretkey = curve.secret
            self.sock.curve_publickey = curve.public
            self.sock.curve_serverkey = curve.server_public
        self.sock.connect(endpoint)
        self.resend_s = resend_s
        self.max_in_flight = max_in_flight
        self.spool = spool if spool is not None else Spool(":memory:")
        self.sent = 0
        self.acked = 0
        self.resent = 0
        self.bad_replies = 0
        self.heartbeats = 0
        self._ever_sent: set[int] = set()

    @property
    def depth(self) -> int:
        """Detections not yet acknowledged."""
        return self.spool.depth()

    def send(self, det: Detection) -> None:
        """Spool the detection, then send what is due (this one included)."""
        self.spool.add(det)
        self._send_due()

    def send_heartbeat(self, payload: dict) -> None:
        try:
            self.sock.send_multipart(encode(KIND_HEARTBEAT, payload), zmq.NOBLOCK)
            self.heartbeats += 1
        except zmq.Again:
            pass

    def _send_due(self) -> None:
        room = self.max_in_flight - self.spool.in_flight(self.resend_s)
        if room <= 0:
            return
        for seq, frames in self.spool.due(self.resend_s, room):
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                break          # not connected and the queue is full: the spool keeps it
            if seq in self._ever_sent:
                self.resent += 1
            else:
                self._ever_sent.add(seq)
                self.sent += 1

    def poll(self, timeout_ms: int = 0) -> None:
        """Read acks; (re)send what is due."""
        while self.sock.poll(timeout_ms, zmq.POLLIN):
            timeout_ms = 0
            try:
                kind, payload = decode(self.sock.recv_multipart())
                if kind != KIND_ACK:
                    raise ContractError(f"unexpected {kind!r}")
                seqs = [int(s) for s in payload.get("seqs", [])]
                n = self.spool.ack(seqs)
                self.acked += n
                self._ever_sent.difference_update(seqs)
            except (ContractError, TypeError, ValueError) as exc:
                self.bad_replies += 1
                log.warning("bad reply from locator: %s", exc)
        self._send_due()

    def drain(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything is acknowledged (or the timeout); True if drained."""
        import time

        end = time.monotonic() + timeout_s
        while self.spool.depth() and time.monotonic() < end:
            self.poll(50)
        return self.spool.depth() == 0

    def close(self) -> None:
        self.sock.close(0)
