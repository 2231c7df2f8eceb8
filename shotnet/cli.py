"""The umbrella command: ``shotnet <command> ...``. Each command is ``main(argv) -> int``."""

from __future__ import annotations

import logging
import os
import sys

COMMANDS = {
    "demo": ("shotnet.demo", "run the simulated city end to end (the main job)"),
    "simulate": ("shotnet.simulate", "write a simulated scene: WAV per sensor, sensors.geojson, truth.jsonl"),
    "locate": ("shotnet.locator.batch", "locate shots in a JSON Lines file of detections"),
    "classify": ("shotnet.sensor.classify_cli", "find and classify impulses in sound files"),
    "train": ("shotnet.models.train", "build the corpus, train the classifier, export ONNX + card"),
    "sensor": ("shotnet.sensor.run", "sensor node: 'shotnet sensor run ... | build-kernels'"),
    "locator": ("shotnet.locator.service", "locator service: 'shotnet locator run ...'"),
    "keys": ("shotnet.sensor.keys", "CURVE key pairs: 'shotnet keys create NAME... | list'"),
    "cameras": ("shotnet.locator.cameras", "camera hub: 'shotnet cameras run|select|check ...'"),
    "calibrate": ("shotnet.calibration.cli", "field tools: 'shotnet calibrate plan|survey|report ...'"),
    "console": ("shotnet.locator.console", "dispatcher console: 'shotnet console run|adduser ...'"),
    "fanout": ("shotnet.locator.fanout", "alert fan-out proxy (XSUB/XPUB) for many consoles and hubs"),
    "audit": ("shotnet.locator.audit", "audit log: 'shotnet audit verify|head|export ...'"),
}


def _usage() -> str:
    lines = ["usage: shotnet <command> [options]", "", "commands:"]
    lines += [f"  {k:10s} {v[1]}" for k, v in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("SHOTNET_LOG", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"shotnet: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    import importlib

    if cmd == "sensor" and rest and rest[0] == "build-kernels":
        # (The node's kernels compiled ahead of time, so a node does not load Numba.)
        return importlib.import_module("shotnet.sensor.nodekernels").main(rest[1:])
    if cmd in ("sensor", "locator"):
        if not rest or rest[0] != "run":
            print(f"usage: shotnet {cmd} run [options]" + (" | build-kernels" if cmd == "sensor" else ""),
                  file=sys.stderr)
            return 2
        rest = rest[1:]

    return importlib.import_module(COMMANDS[cmd][0]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
