"""The PyTorch side of `experiments/benchmark_train.py --torch_dir`: an eager YOLOv4 training step.

    python experiments/torch_peer.py TORCH_DIR SETUP_JSON   # started by benchmark_train.py

A child process (PyTorch and XLA each size their thread pools to the machine, and each side's
peak memory is its own process's), with TORCH_DIR (a `pip install --target` folder, e.g.
`python -m pip install --target .cache/torch torch`) first on sys.path. Nothing here imports
JAX, so the process holds only Python, PyTorch and the step. Its malloc runs with the JAX
side's settings (the environment it inherits, with glibc's huge-page tunable where
`yolov4_jax.ops.hostmem.apply_defaults` restarted benchmark_train with it), and reports them.

SETUP_JSON names the network as the project's layer specs (`{"type": "Conv", **fields}` per
layer, the same tuple the JAX model runs), the batch (`.npz` with image, boxes, labels, mask:
the JAX side's batch) and the optimiser. The step is what a straightforward PyTorch port of
YOLOv4 does, in float32, NCHW, eager:

- the network: `nn.Conv2d` + `nn.BatchNorm2d` (training mode, batch statistics) + activation
  per [convolutional], darknet's max-pool padding, nearest upsampling, concatenation, residual
  sums; the [yolo] layers' inputs are the outputs;
- the loss of darknet's [yolo] layer as the JAX step computes it: predictions decoded with
  `scale_x_y`, no-object mask from the best IoU of every prediction with the image's boxes
  (`ignore_thresh`), every ground truth assigned to its best anchor and to every anchor whose
  shape IoU passes `iou_thresh`, CIoU (or MSE on the raw offsets) times `iou_normalizer`,
  binary cross-entropy on objectness and classes;
- backward, then `torch.optim.SGD` with momentum and weight decay on the conv kernels.

With `"dtype": "bfloat16"` (benchmark_train's `--dtype bfloat16`) the network runs under
`torch.autocast("cpu", dtype=torch.bfloat16)`, PyTorch's mixed precision (its convolutions in
bf16 through oneDNN, float32 weights and BatchNorm), and the loss in float32 on the heads cast
back, as the JAX side's `model.dtype=bfloat16`.

stdin/stdout carry one JSON request and one JSON answer per line (experiments/peer_process.py;
{"error": traceback} on failure): {"op": "time", "steps": k} runs k timed steps and returns
their times; {"op": "memory"} the process's resident set now and its peak since the warm-up
step (VmHWM restarted after it); {"op": "quit"}. The first answer, sent unasked once the
model is built and one warm-up step has run, says what was built.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Neither imports JAX: benchmark_train imports it lazily, hostmem needs ctypes only.
from experiments.benchmark_train import reset_peak_rss, status_gb  # noqa: E402
from experiments.peer_process import protocol_channel, send, serve  # noqa: E402
from experiments.timing import timed_calls  # noqa: E402
from yolov4_jax.ops import hostmem  # noqa: E402


def build(torch, layers: list[dict], in_channels: int = 3):
    """The network of `layers` as an `nn.Module` returning the [yolo] layers' inputs (NCHW)."""
    nn, F = torch.nn, torch.nn.functional
    activations = {
        "linear": nn.Identity,
        "leaky": lambda: nn.LeakyReLU(0.1),
        "mish": nn.Mish,
        "relu": nn.ReLU,
        "swish": nn.SiLU,
        "logistic": nn.Sigmoid,
    }

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.specs = layers
            self.blocks = nn.ModuleDict()
            channels: list[int] = []
            c = in_channels
            for i, spec in enumerate(layers):
                kind = spec["type"]
                if kind == "Conv":
                    bn = spec["batch_normalize"]
                    conv = nn.Conv2d(
                        c,
                        spec["filters"],
                        spec["size"],
                        spec["stride"],
                        spec["padding"],
                        groups=spec["groups"],
                        bias=not bn,
                    )
                    # darknet's rolling update .99 old + .01 batch is PyTorch's momentum .01
                    norm = nn.BatchNorm2d(spec["filters"], eps=1e-5, momentum=0.01)
                    parts = [conv, norm] if bn else [conv]
                    self.blocks[str(i)] = nn.Sequential(*parts, activations[spec["activation"]]())
                    c = spec["filters"]
                elif kind == "Route":
                    ins = [channels[j] for j in spec["layers"]]
                    c = sum(ch // spec["groups"] for ch in ins)
                elif kind == "Shortcut":
                    if spec["weights_type"] != "none" or spec["activation"] != "linear":
                        raise ValueError(f"layer {i}: the PyTorch peer has no weighted shortcut")
                elif kind not in ("MaxPool", "Upsample", "Yolo"):
                    raise ValueError(
                        f"layer {i}: the PyTorch peer does not build [{kind}] layers "
                        "(it has Conv, Route, Shortcut, MaxPool, Upsample, Yolo)"
                    )
                channels.append(c)

        def forward(self, x):
            outputs, heads = [], []
            for i, spec in enumerate(self.specs):
                kind = spec["type"]
                if kind == "Conv":
                    x = self.blocks[str(i)](x)
                elif kind == "MaxPool":
                    before = spec["padding"] // 2
                    after = spec["padding"] - before
                    if spec["padding"]:
                        x = F.pad(x, (before, after, before, after), value=-math.inf)
                    x = F.max_pool2d(x, spec["size"], spec["stride"])
                elif kind == "Upsample":
                    x = F.interpolate(x, scale_factor=spec["stride"], mode="nearest")
                elif kind == "Route":
                    parts = []
                    for j in spec["layers"]:
                        part = outputs[j]
                        if spec["groups"] > 1:
                            part = part.chunk(spec["groups"], dim=1)[spec["group_id"]]
                        parts.append(part)
                    x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
                elif kind == "Shortcut":
                    for j in spec["layers"]:
                        other = outputs[j]
                        if other.shape[1] == x.shape[1]:
                            x = x + other
                        else:  # darknet's partial residual: into the leading channels
                            n = min(other.shape[1], x.shape[1])
                            x = torch.cat([x[:, :n] + other[:, :n], x[:, n:]], dim=1)
                elif kind == "Yolo":
                    heads.append((x, spec))
                outputs.append(x)
            return heads

    return Net()


def _ciou(torch, a, b):
    """CIoU of xyxy boxes a and b [..., 4] (Zheng et al. 2020), as the JAX loss computes it."""
    eps = 1e-9
    inter_w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(0)
    inter_h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(0)
    inter = inter_w * inter_h
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    iou = inter / (wa * ha + wb * hb - inter + eps)
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    centre = ((a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]) ** 2) / 4 + (
        (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]) ** 2
    ) / 4
    v = (4 / math.pi**2) * (torch.atan(wb / (hb + eps)) - torch.atan(wa / (ha + eps))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - centre / (cw**2 + ch**2 + eps) - alpha * v


def _box_iou(torch, a, b):
    """Pairwise IoU [N, M, G] of xyxy boxes a [N, M, 4] and b [N, G, 4]."""
    a, b = a[:, :, None], b[:, None]
    inter_w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(0)
    inter_h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(0)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter + 1e-9)


def yolo_loss(torch, raw, spec: dict, boxes, labels, valid, size: int):
    """darknet's [yolo] loss for one head: raw [N, A*(5+C), H, W]; boxes [N, G, 4] xyxy in
    [0, 1], labels [N, G], valid [N, G]."""
    F = torch.nn.functional
    n, _, h, w = raw.shape
    mask, classes, s = spec["mask"], spec["classes"], spec["scale_x_y"]
    a = len(mask)
    p = raw.view(n, a, 5 + classes, h, w).permute(0, 1, 3, 4, 2)  # [N, A, H, W, 5 + C]
    all_anchors = torch.tensor(spec["anchors"], dtype=torch.float32) / size  # [9, 2]
    anchors = all_anchors[list(mask)].view(1, a, 1, 1, 2)
    gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cx = (torch.sigmoid(p[..., 0]) * s - (s - 1) / 2 + gx) / w
    cy = (torch.sigmoid(p[..., 1]) * s - (s - 1) / 2 + gy) / h
    bw, bh = torch.exp(p[..., 2]) * anchors[..., 0], torch.exp(p[..., 3]) * anchors[..., 1]
    pred = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)

    with torch.no_grad():  # no-object mask: predictions that overlap no ground truth enough
        iou = _box_iou(torch, pred.reshape(n, -1, 4), boxes) * valid[:, None].float()
        obj_weight = (iou.max(dim=-1).values < spec["ignore_thresh"]).float().view(n, a, h, w)
        # Assignment: best anchor of all, and any whose shape IoU passes iou_thresh.
        gw, gh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        inter = torch.minimum(gw[..., None], all_anchors[:, 0]) * torch.minimum(
            gh[..., None], all_anchors[:, 1]
        )
        shape_iou = inter / (
            (gw * gh)[..., None] + all_anchors[:, 0] * all_anchors[:, 1] - inter + 1e-9
        )
        best = shape_iou.argmax(dim=-1, keepdim=True)
        chosen = torch.zeros_like(shape_iou, dtype=torch.bool).scatter_(-1, best, True)
        chosen |= shape_iou > spec["iou_thresh"]
        chosen = chosen[..., list(mask)] & valid[..., None]  # [N, G, A]
        bi, gi, ai = chosen.nonzero(as_tuple=True)
        centre = (boxes[bi, gi, :2] + boxes[bi, gi, 2:]) / 2
        col = (centre[:, 0] * w).long().clamp(0, w - 1)
        row = (centre[:, 1] * h).long().clamp(0, h - 1)
        obj_target = torch.zeros(n, a, h, w)
        obj_target[bi, ai, row, col] = 1.0
        obj_weight[bi, ai, row, col] = 1.0
        cls_target = F.one_hot(labels[bi, gi].long(), classes).float()

    obj = F.binary_cross_entropy_with_logits(p[..., 4], obj_target, reduction="none")
    loss = spec["obj_normalizer"] * (obj * obj_weight).sum()
    assigned = p[bi, ai, row, col]
    loss = loss + spec["cls_normalizer"] * F.binary_cross_entropy_with_logits(
        assigned[:, 5:], cls_target, reduction="sum"
    )
    if spec["iou_loss"] == "mse":
        target_xy = centre * torch.tensor([w, h]) - torch.stack([col, row], dim=1)
        box = ((torch.sigmoid(assigned[:, :2]) * s - (s - 1) / 2 - target_xy) ** 2).sum()
    else:  # CIoU (the JAX step's DIoU/GIoU differ by a few elementwise terms)
        box = (1 - _ciou(torch, pred[bi, ai, row, col], boxes[bi, gi])).sum()
    return loss + spec["iou_normalizer"] * box


class Peer:
    def __init__(self, torch, setup: dict):
        import numpy as np

        self.torch = torch
        torch.manual_seed(0)
        self.model = build(torch, setup["layers"])
        self.model.train()
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            (decay if name.endswith("0.weight") and param.ndim == 4 else no_decay).append(param)
        self.optimizer = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": setup["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=setup["learning_rate"],
            momentum=setup["momentum"],
        )
        batch = np.load(setup["batch"])
        self.images = torch.from_numpy(batch["image"])  # uint8 [N, S, S, 3]
        self.boxes = torch.from_numpy(batch["boxes"])
        self.labels = torch.from_numpy(batch["labels"])
        self.valid = torch.from_numpy(batch["mask"])
        self.size = self.images.shape[1]
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.bf16 = setup.get("dtype", "float32") == "bfloat16"

    def step(self) -> float:
        torch = self.torch
        x = self.images.permute(0, 3, 1, 2).float().div_(255.0)
        if self.bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                heads = self.model(x)
            heads = [(raw.float(), spec) for raw, spec in heads]
        else:
            heads = self.model(x)
        loss = sum(
            yolo_loss(torch, raw, spec, self.boxes, self.labels, self.valid, self.size)
            for raw, spec in heads
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def time(self, steps: int) -> dict:
        losses = [float("nan")]
        times = timed_calls(lambda: losses.append(self.step()), steps)
        return {"times": times, "loss": losses[-1]}

    def memory(self) -> dict:
        return {"rss_gb": status_gb("VmRSS"), "peak_gb": status_gb("VmHWM")}


def start(torch_dir: str, setup_path: str) -> tuple[Peer, dict]:
    """Builds the peer and runs its warm-up step; returns it and the first answer."""
    sys.path.insert(0, torch_dir)
    import torch

    with open(setup_path) as f:
        setup = json.load(f)
    if setup.get("threads"):
        torch.set_num_threads(setup["threads"])
    rss_before = status_gb("VmRSS")
    peer = Peer(torch, setup)
    begin = time.perf_counter()
    loss = peer.step()  # warm-up
    warmup_s = time.perf_counter() - begin
    reset_peak_rss()
    return peer, {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "huge_pages": hostmem.huge_pages(),  # inherited from the JAX side's process
        "parameters": peer.parameters,
        "dtype": "bfloat16" if peer.bf16 else "float32",
        "rss_before_model_gb": rss_before,
        "warmup_s": warmup_s,
        "loss": loss,
    }


def main(argv: list[str]) -> int:
    channel = protocol_channel()
    try:
        peer, ready = start(argv[1], argv[2])
    except Exception:  # noqa: BLE001 - the parent reads one JSON line
        send(channel, {"error": traceback.format_exc()})
        return 1
    send(channel, ready)
    serve(peer, channel)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
