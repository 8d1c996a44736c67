"""The app of bench/serving_model.py: GET /wait parks until a broadcast, like a blocking query.

Each worker holds one connection to the bench's broadcast server (standing in for the
ZooKeeper watch that feeds the view): a byte read there bumps the generation and wakes every
parked request. Runs unchanged under gthread (real threads) and gevent (patched threads).
"""

from __future__ import annotations

import os
import socket
import threading

from flask import Flask, jsonify

app = Flask(__name__)
_cond = threading.Condition()
_state = {"gen": 0, "started": False, "waiting": 0}
BODY = {"items": [{"id": f"10.0.0.{i}:8080", "enabled": True, "weight": 100} for i in range(20)]}


def _listen() -> None:
    sock = socket.create_connection(("127.0.0.1", int(os.environ["WAKE_PORT"])))
    while sock.recv(1):
        with _cond:
            _state["gen"] += 1
            _cond.notify_all()


@app.before_request
def _start() -> None:
    if not _state["started"]:
        _state["started"] = True
        threading.Thread(target=_listen, daemon=True).start()


@app.get("/wait")
def wait() -> object:
    """Park until the next broadcast (at most 60 s), then answer a 20-item body."""
    with _cond:
        gen = _state["gen"]
        _state["waiting"] += 1
        _cond.wait_for(lambda: _state["gen"] != gen, timeout=60)
        _state["waiting"] -= 1
    return jsonify(BODY)


@app.get("/waiting")
def waiting() -> object:
    """How many requests this worker holds parked."""
    return jsonify({"waiting": _state["waiting"], "pid": os.getpid()})
