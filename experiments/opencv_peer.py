"""The OpenCV side of experiments/benchmark_opencv.py: a child process that serves OpenCV DNN.

    python experiments/opencv_peer.py OPENCV_DIR     # started by benchmark_opencv.py, not by hand

OpenCV 5 dropped the darknet importer, and two cv2 builds cannot share a process, so the
benchmark runs OpenCV 4.x here, with OPENCV_DIR (a `pip install --target` folder) first on
sys.path, and talks to it over stdin/stdout (experiments/peer_process.py: one JSON request per
line, one JSON answer per line, {"error": traceback} on failure). Nothing here imports JAX.
Requests:

- {"op": "load", "cfg", "weights", "threads"}: reads the darknet files with
  `cv2.dnn.readNetFromDarknet` (backend OpenCV, target CPU), sets `cv2.setNumThreads`.
- {"op": "input", "images"}: a `.npy` of uint8 RGB images [B, S, S, 3]; they are turned into
  BGR (as `cv2.imread` gives them) and kept with their `blobFromImages(1/255, swapRB=True)`.
- {"op": "check", "names", "out"}: one forward pass of a fresh copy of the net that also
  returns the layers `names` (the convs feeding the [yolo] layers), saved to the `.npz` `out`.
- {"op": "time", "what", "iters", ...}: `iters` timed calls of "forward" (setInput + forward
  of the [yolo] outputs, blob ready) or "detect" (blobFromImages + forward + `postprocess`).
- {"op": "quit"}.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from experiments.peer_process import protocol_channel, serve  # noqa: E402
from experiments.timing import timed_calls  # noqa: E402


def postprocess(outputs, batch: int, size: int, cv2, np, options: dict) -> list:
    """OpenCV's usual YOLO post-processing (its dnn object_detection sample): per image, the
    best class of every row, rows scoring above the threshold, class-aware `NMSBoxesBatched`
    on at most `top_k` candidates, at most `max_detections` kept. Rows are [cx, cy, w, h,
    objectness, objectness * class probabilities] normalised to the input (region_layer.cpp).
    """
    rows = np.concatenate([o.reshape(batch, -1, o.shape[-1]) for o in outputs], axis=1)
    kept = []
    for image_rows in rows:
        scores = image_rows[:, 5:]  # [M, C]
        classes = scores.argmax(axis=1)
        confidence = scores[np.arange(len(scores)), classes]
        candidates = np.nonzero(confidence > options["score_threshold"])[0]
        xywh = image_rows[candidates, :4] * size
        xywh[:, :2] -= xywh[:, 2:] / 2  # centre -> top-left corner, pixels
        index = cv2.dnn.NMSBoxesBatched(
            xywh.astype(np.float64),
            confidence[candidates].astype(np.float32),
            classes[candidates].astype(np.int32),
            options["score_threshold"],
            options["iou_threshold"],
            top_k=options["top_k"],
        )
        kept.append(
            candidates[np.asarray(index, np.int64).reshape(-1)][: options["max_detections"]]
        )
    return kept


class Server:
    def __init__(self, cv2, np):
        self.cv2, self.np = cv2, np
        self.net = None

    def _read(self, cfg: str, weights: str):
        net = self.cv2.dnn.readNetFromDarknet(cfg, weights)
        net.setPreferableBackend(self.cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(self.cv2.dnn.DNN_TARGET_CPU)
        return net

    def load(self, cfg: str, weights: str, threads: int) -> dict:
        self.cv2.setNumThreads(threads)
        self.files = (cfg, weights)
        self.net = self._read(cfg, weights)
        self.out_names = list(self.net.getUnconnectedOutLayersNames())
        return {"version": self.cv2.__version__, "threads": self.cv2.getNumThreads()}

    def input(self, images: str) -> dict:
        rgb = self.np.load(images)
        self.bgr = [self.np.ascontiguousarray(image[..., ::-1]) for image in rgb]
        self.size = rgb.shape[1]
        self.blob = self._blob()
        return {"blob": list(self.blob.shape)}

    def _blob(self):
        size = (self.size, self.size)
        return self.cv2.dnn.blobFromImages(self.bgr, 1 / 255.0, size, swapRB=True, crop=False)

    def check(self, names: list[str], out: str) -> dict:
        # A fresh net: asking for inner layers changes which layers OpenCV fuses, so the net
        # that is timed never sees such a request.
        net = self._read(*self.files)
        net.setInput(self.blob)
        values = net.forward(self.out_names + names)
        self.np.savez(out, **dict(zip(self.out_names + names, values, strict=True)))
        return {"yolo": self.out_names}

    def time(self, what: str, iters: int, **options) -> dict:
        count = [0]

        def forward():
            self.net.setInput(self.blob)
            self.net.forward(self.out_names)

        def detect():
            self.net.setInput(self._blob())
            outputs = self.net.forward(self.out_names)
            kept = postprocess(outputs, len(self.bgr), self.size, self.cv2, self.np, options)
            count[0] = sum(len(k) for k in kept)

        if what not in ("forward", "detect"):
            raise ValueError(f"unknown timing {what!r}")
        times = timed_calls(forward if what == "forward" else detect, iters)
        return {"times": times, "detections": count[0]}


def main(opencv_dir: str) -> int:
    channel = protocol_channel()
    sys.path.insert(0, os.path.abspath(opencv_dir))
    import cv2
    import numpy as np

    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromDarknet"):
        raise SystemExit(f"{cv2.__file__} (OpenCV {cv2.__version__}) has no darknet importer")
    serve(Server(cv2, np), channel)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
