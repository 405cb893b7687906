"""A peer library in a child process, spoken to in JSON lines: both sides of the protocol.

The benchmarks time JAX against another library on the same machine (OpenCV 4 in
experiments/opencv_peer.py, PyTorch in experiments/torch_peer.py). Each peer runs in its own
process, with its own install folder first on its path, its own threads and its own peak
memory. The parent writes one JSON request per line, {"op": NAME, ...}; the child answers
each with one JSON line, {"error": traceback} on failure, and exits on {"op": "quit"}.
Nothing here imports JAX.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback


class PeerProcess:
    """The parent's side: starts `script` with `args` and sends it requests."""

    def __init__(self, name: str, script: str, *args: str):
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def answer(self, op: str) -> dict:
        """The child's next answer line; its error, or its exit, raised as RuntimeError."""
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} process exited ({self.process.wait()}) at {op}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.name} process, {op}:\n{answer['error']}")
        return answer

    def __call__(self, op: str, **request) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **request}) + "\n")
        return self.answer(op)

    def close(self) -> None:
        try:
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.close()
        except BrokenPipeError:  # it has exited already
            pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def protocol_channel():
    """The child's answer channel: the real stdout, which from now on only the protocol
    writes to; anything a library prints goes to stderr."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return channel


def send(channel, answer: dict) -> None:
    channel.write(json.dumps(answer) + "\n")
    channel.flush()


def serve(server, channel) -> None:
    """The child's side: runs each request as `server.<op>(**fields)` until "quit"."""
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "quit":
            break
        try:
            answer = getattr(server, op)(**request)
        except Exception:  # noqa: BLE001 - reported to the parent, which raises it
            answer = {"error": traceback.format_exc()}
        send(channel, answer)
