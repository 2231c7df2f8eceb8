"""Node -> locator delivery over ZeroMQ: DEALER to ROUTER with application acks.

The node keeps every detection in an outbox until the locator acknowledges its
``(sensor_id, seq)``; unacknowledged detections are resent after ``resend_s``. Duplicates
are harmless: the locator de-duplicates on the stable key ``sensor_id:seq``.
(The field node replaces the in-memory outbox with an on-disk SQLite spool.)
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import zmq

from .contract import (KIND_ACK, KIND_DETECTION, ContractError, Detection, decode, detection_to_dict,
                       encode)

log = logging.getLogger(__name__)


class DetectionSender:
    """A DEALER connected to the locator's ROUTER, with an outbox of unacked detections."""

    def __init__(self, endpoint: str, sensor_id: str, ctx: zmq.Context | None = None, resend_s: float = 2.0):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, sensor_id.encode())
        self.sock.connect(endpoint)
        self.resend_s = resend_s
        self.outbox: OrderedDict[int, tuple[float, list[bytes]]] = OrderedDict()
        self.sent = 0
        self.acked = 0
        self.resent = 0
        self.bad_replies = 0

    def send(self, det: Detection) -> None:
        frames = encode(KIND_DETECTION, detection_to_dict(det))
        self.outbox[det.seq] = (time.monotonic(), frames)
        self.sock.send_multipart(frames)
        self.sent += 1

    def poll(self, timeout_ms: int = 0) -> None:
        """Read acks; resend what has waited longer than ``resend_s``."""
        while self.sock.poll(timeout_ms, zmq.POLLIN):
            timeout_ms = 0
            try:
                kind, payload = decode(self.sock.recv_multipart())
                if kind != KIND_ACK:
                    raise ContractError(f"unexpected {kind!r}")
                for seq in payload.get("seqs", []):
                    if self.outbox.pop(seq, None) is not None:
                        self.acked += 1
            except ContractError as exc:
                self.bad_replies += 1
                log.warning("bad reply from locator: %s", exc)
        now = time.monotonic()
        for seq, (t_sent, frames) in list(self.outbox.items()):
            if now - t_sent < self.resend_s:
                break
            self.sock.send_multipart(frames)
            self.outbox[seq] = (now, frames)
            self.outbox.move_to_end(seq)
            self.resent += 1

    def drain(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything is acknowledged (or the timeout); True if drained."""
        end = time.monotonic() + timeout_s
        while self.outbox and time.monotonic() < end:
            self.poll(50)
        return not self.outbox

    def close(self) -> None:
        self.sock.close(0)
