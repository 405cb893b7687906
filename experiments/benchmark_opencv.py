"""Inference speed against OpenCV's DNN module: same network, same weights, one run, alternating.

    python -m pip install --no-deps --target .cache/opencv4 opencv-python-headless==4.10.0.84
    python experiments/benchmark_opencv.py [--model yolov4|yolov4_tiny|yolov4_csp] \\
        [--sizes 416,608] [--batches 1,8] [--dtypes float32,bfloat16] [--rounds 5] [--iters 2]

`--dtypes` entries are a compute dtype with an optional `:<conv algorithm>`
(`model.conv_algorithm`: auto, direct, winograd, mkl; default auto), e.g.
`--dtypes float32,float32:direct` times the network with and without Winograd's 3x3
convolutions in one run, and `--dtypes float32,bfloat16,bfloat16:mkl` bfloat16 through XLA
(which computes it in float32) and through oneMKL's bf16 products (`yolov4_jax.ops.cpu_gemm`;
`pip install mkl`).

The network (`--model`, 80 classes) gets random weights, written with the project's darknet
export (`yolov4_jax.darknet.save`) into a temporary folder; JAX reads them back with
`yolov4_jax.darknet.load`, OpenCV with `cv2.dnn.readNetFromDarknet` (backend OpenCV, target
CPU). OpenCV 5 has no darknet importer, so OpenCV 4.x runs in a child process
(experiments/opencv_peer.py) with `--opencv_dir` first on its path; without that folder the
script times the JAX side only and says so. Both sides use every core: XLA:CPU sizes its
thread pool to the machine, OpenCV gets `cv2.setNumThreads(--threads)` (default: the cores
this process may use).

For every input size the random weights are drawn again, calibrated on that size's images
(see "Weights" below) and written out; `--cfg/--weights` use trained darknet files instead,
exported the same way. The images are uint8 RGB scenes from the embedded dataset's renderer
(drawn at up to 512 pixels, resized above) or the `--images` files stretched to the input
size; a batch of B is the first B of max(--batches). OpenCV gets them as BGR (as
`cv2.imread` gives them) through `blobFromImages(1/255, swapRB=True)`, JAX as RGB / 255.
For every input size and batch size:

1. Agreement. One forward pass of each on the same images. Compared: the raw output of the
   conv feeding each [yolo] layer (OpenCV's layer `conv_<i>`, or its activation's for
   yolov4-csp's logistic heads), and OpenCV's decoded [yolo] rows against the
   project's decode (box centre and size in pixels, and objectness x class probability, of
   the predictions where OpenCV keeps a class probability, i.e. above the [yolo] layer's
   `thresh`). The run stops if the raw outputs differ by more than `--tolerance`
   relative to their largest magnitude (with `--weights` it only says so: see "Weights").
2. bf16 accuracy (for each bfloat16 entry of `--dtypes`): JAX bf16 against JAX fp32 on the
   same input, on the decoded predictions whose fp32 score passes the threshold (box corners
   in pixels, that score), and after NMS (the share of fp32 detections that a bf16 detection
   of the same class overlaps with IoU >= .5).
3. Timing, in `--rounds` rounds: JAX runs `--iters` calls of each of its measurements, then
   the child runs `--iters` of each of OpenCV's, and so on; medians over all calls.
   - forward: the jitted `model.apply` on a device-resident float batch, `block_until_ready`;
     OpenCV: `setInput(blob)` + `forward` of the [yolo] outputs.
   - detect: `prediction.make_predict_fn` (decode, clip, NMS as the cfg says: DIoU-NMS for
     yolov4's `greedynms`) from uint8 images to detections fetched to the host; OpenCV:
     `blobFromImages` + `forward` + its sample's post-processing (best class per row,
     `NMSBoxesBatched`), see `opencv_peer.postprocess`. Both: score .25, IoU .45, at most
     1000 candidates and 100 detections per image.
   - ONNX Runtime forward (unless `--no-onnxruntime`): the network exported to ONNX by the
     project's exporter (`yolov4_jax.deploy.onnx_export`, float32, BN folded), run by ONNX
     Runtime's CPU provider with `--threads` intra-op threads on the same float batch (NHWC
     in, the raw heads out); its agreement with JAX's heads is reported (and enforced at
     `--tolerance`) beside OpenCV's. Its `x OpenCV` compares it with OpenCV's forward.
   GFLOP/s is the network's FLOPs (XLA's count for the fp32 forward pass, as
   benchmark_models.py counts them) per median call, for every row, so it is comparable;
   `x OpenCV` is OpenCV's median for the same measurement divided by this row's (> 1: faster).

Weights. Plain random weights leave the heads flat (every score near .25, no real
detections; deep layers forget their input), so `detector_variables` calibrates them on the
very scenes that are benchmarked, as a trained detector is fitted to its data: every conv
kernel is rescaled so that its output before BN has the same standard deviation
(`PRE_BN_STD`) in every channel, with BN's statistics set to match, and every head so that
objectness and class logits are mostly low (mean -6 and -5, std 2), which leaves tens of
confident boxes per image. (Calibrated on other scenes, the random deep network drifts layer
by layer on new ones: yolov4's heads came out 10-100x too large.) Variances of 100 before BN
keep the BN epsilon out of the agreement check: darknet (and this project) divide by
sqrt(var + 1e-5), OpenCV's importer by sqrt(var + 1e-6), a relative change of 4.5e-6 / var
per BN layer that the deep network amplifies like rounding (with variances of 1, yolov4's
heads differed by 8e-3 of their largest magnitude; trained weights, with variances mostly
below 1, see OpenCV depart from darknet accordingly, so with `--weights` the tolerance is
reported, not enforced). Timing does not depend on the values. Random deep networks amplify
rounding more than trained ones (see tests/test_darknet_parity.py), so the bf16 figures are an
upper bound on what trained weights would show.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmark_models import (  # noqa: E402
    BUILDERS,
    count_params,
    network_flops,
    random_variables,
)
from experiments.peer_process import PeerProcess  # noqa: E402
from experiments.timing import timed_calls  # noqa: E402
from yolov4_jax import darknet  # noqa: E402
from yolov4_jax.data.synthetic import render_image  # noqa: E402
from yolov4_jax.deploy import onnx_export  # noqa: E402
from yolov4_jax.detection.boxes import pairwise_iou, xyxy_to_xywh  # noqa: E402
from yolov4_jax.evaluation import prediction  # noqa: E402
from yolov4_jax.models import Network, specs  # noqa: E402
from yolov4_jax.ops.conv import CONV_ALGORITHMS  # noqa: E402

OPENCV_DIR = os.path.join(ROOT, ".cache", "opencv4")
OPENCV_INSTALL = (
    "python -m pip install --no-deps --target .cache/opencv4 opencv-python-headless==4.10.0.84"
)
SCENE_MAX_SIDE = 512  # the largest image the embedded dataset's renderer draws
PEER = os.path.join(ROOT, "experiments", "opencv_peer.py")
# Thresholds and caps of both sides' post-processing (darknet's detector defaults).
NMS = prediction.NmsOptions()
# Standard deviation of every conv output before BN (on the calibration scenes); large enough
# that the BN epsilons (1e-5 here and in darknet, 1e-6 in OpenCV) change results by ~5e-8.
PRE_BN_STD = 10.0
# Target mean and std of the head logits, per channel of an anchor's (tx, ty, tw, th, objectness,
# classes): boxes near their cell and anchor, low objectness and class scores but for a few.
HEAD_TARGETS = (
    (slice(0, 2), 0.0, 1.0),
    (slice(2, 4), 0.0, 0.5),
    (slice(4, 5), -6.0, 2.0),
    (slice(5, None), -5.0, 2.0),
)


def scene_images(size: int, batch: int, seed: int) -> np.ndarray:
    """`batch` uint8 RGB scenes [B, S, S, 3] (shapes on textured backgrounds)."""
    import cv2  # the project's OpenCV, for resizing only

    rng = np.random.default_rng(seed)
    side = min(size, SCENE_MAX_SIDE)
    scenes = [render_image(rng, side, side, 8)[0] for _ in range(batch)]
    return np.stack([cv2.resize(s, (size, size), interpolation=cv2.INTER_LINEAR) for s in scenes])


def _head_convs(layers) -> list[int]:
    """Index of the conv feeding each [yolo] layer (darknet and OpenCV: the layer before)."""
    out = []
    for i, spec in enumerate(layers):
        if isinstance(spec, specs.Yolo):
            conv = layers[i - 1]
            if not isinstance(conv, specs.Conv) or conv.batch_normalize:
                raise ValueError(f"layer {i - 1} feeding [yolo] {i} is not a plain conv")
            out.append(i - 1)
    return out


def _opencv_name(layers, index: int) -> str:
    """OpenCV's name for the output of darknet layer `index`, a conv (darknet_io.cpp names
    the conv `conv_<index>` and its activation `<activation>_<index + 1>`)."""
    activation = layers[index].activation
    return f"conv_{index}" if activation == "linear" else f"{activation}_{index + 1}"


def detector_variables(model: Network, images: np.ndarray, seed: int = 0):
    """Random variables calibrated on `images` (see the module docstring)."""
    variables = random_variables(model, images.shape[1], seed)
    params = jax.tree.map(np.asarray, variables["params"])
    x = jnp.asarray(images, jnp.float32) / 255.0
    # BN with batch statistics does not depend on the scale of the conv before it, so one
    # pass gives every layer's statistics however the kernels are rescaled afterwards.
    calibrate = model.clone(bn_momentum=0.0).apply
    _, stats = jax.jit(
        functools.partial(calibrate, use_running_average=False, mutable=["batch_stats"])
    )(variables, x)
    batch_stats = {}
    for name, layer in jax.tree.map(np.asarray, stats["batch_stats"]).items():
        ratio = PRE_BN_STD / np.sqrt(layer["bn"]["var"])
        params[name]["kernel"] = params[name]["kernel"] * ratio
        mean, var = layer["bn"]["mean"] * ratio, np.full_like(ratio, PRE_BN_STD**2)
        batch_stats[name] = {"bn": {"mean": mean, "var": var}}
    variables = {"params": params, "batch_stats": batch_stats}

    heads = _head_convs(model.layers)
    linear = model.clone(
        layers=tuple(
            dataclasses.replace(s, activation="linear") if i in heads else s
            for i, s in enumerate(model.layers)
        )
    )
    logits = jax.jit(linear.apply)(variables, x)  # pre-activation of each head conv
    for index, head, raw in zip(heads, model.heads, logits, strict=True):
        raw = np.asarray(raw).reshape(-1, len(head.mask), 5 + head.classes)
        mean, std = raw.mean(axis=0), raw.std(axis=0) + 1e-6  # [A, 5 + C]
        target = np.zeros((2,) + mean.shape, np.float32)
        for channels, t_mean, t_std in HEAD_TARGETS:
            target[:, :, channels] = np.asarray([t_mean, t_std])[:, None, None]
        ratio = (target[1] / std).reshape(-1)
        conv = params[f"layer{index:03d}"]
        conv["kernel"] = conv["kernel"] * ratio
        conv["bias"] = (conv["bias"] - mean.reshape(-1)) * ratio + target[0].reshape(-1)
    return jax.tree.map(jnp.asarray, variables)


def write_network(model: Network, variables, folder: str, size: int) -> tuple[str, str]:
    """darknet cfg (input `size`) and weights of `model`, with the project's export."""
    net = dict(model.net, width=str(size), height=str(size), channels="3")
    cfg = os.path.join(folder, f"net{size}.cfg")
    weights = os.path.join(folder, "net.weights")
    darknet.save(model.clone(net=tuple(net.items())), variables, weights, cfg_path=cfg)
    return cfg, weights


class OpenCVPeer(PeerProcess):
    """The child process running OpenCV 4 (experiments/opencv_peer.py)."""

    def __init__(self, opencv_dir: str):
        super().__init__("OpenCV", PEER, opencv_dir)


def _decode(model: Network, outputs, size: int):
    boxes, scores = prediction.decode_heads(outputs, model.heads, (size, size))
    return np.asarray(boxes) * size, np.asarray(scores)  # [B, M, 4] xyxy pixels, [B, M, C]


def agreement(peer: OpenCVPeer, model: Network, ours, images, folder: str) -> dict:
    """Largest differences between OpenCV's outputs and `ours` (JAX fp32 heads) for `images`."""
    size = images.shape[1]
    names = [_opencv_name(model.layers, i) for i in _head_convs(model.layers)]
    out = os.path.join(folder, "opencv_outputs.npz")
    yolo_names = peer("check", names=names, out=out)["yolo"]
    theirs = np.load(out)
    raw_diff = raw_scale = 0.0
    for name, raw in zip(names, ours, strict=True):
        other = theirs[name].transpose(0, 2, 3, 1)  # NCHW -> NHWC
        raw_diff = max(raw_diff, float(np.abs(np.asarray(raw) - other).max()))
        raw_scale = max(raw_scale, float(np.abs(other).max()))
    boxes, scores = _decode(model, ours, size)
    rows = np.concatenate(
        [theirs[n].reshape(len(images), -1, theirs[n].shape[-1]) for n in yolo_names], axis=1
    )
    kept = rows[..., 5:] > 0  # region_layer.cpp zeroes probabilities below the layer's thresh
    # Boxes of the predictions OpenCV keeps a class for (the others include boxes thousands
    # of pixels wide, whose size amplifies rounding and which no threshold lets through).
    box_diff = np.abs(np.asarray(xyxy_to_xywh(boxes)) - rows[..., :4] * size)[kept.any(-1)]
    return {
        "raw_max_abs": raw_diff,
        "raw_rel": raw_diff / raw_scale,
        "box_max_px": float(box_diff.max(initial=0.0)),
        "boxes_compared": len(box_diff),
        "score_max_abs": float(np.abs(scores - rows[..., 5:])[kept].max(initial=0.0)),
        "scores_compared": int(kept.sum()),
    }


def bf16_accuracy(model: Network, raw32, raw16, detections32, detections16, size: int) -> dict:
    """bf16 against fp32 (JAX): raw heads, decoded predictions, detections (see docstring)."""
    raw_rel = max(
        float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(raw32, raw16, strict=True)
    )
    (b32, s32), (b16, s16) = _decode(model, raw32, size), _decode(model, raw16, size)
    best = s32.argmax(-1)[..., None]  # compare the score of fp32's best class
    s32, s16 = np.take_along_axis(s32, best, -1)[..., 0], np.take_along_axis(s16, best, -1)[..., 0]
    confident = s32 > NMS.score_threshold
    box, score = np.abs(b32 - b16)[confident], np.abs(s32 - s16)[confident]
    d32, d16 = detections32, detections16
    matched = total = 0
    for i in range(len(d32.valid)):
        a, b = d32.valid[i], d16.valid[i]
        overlap = np.asarray(pairwise_iou(d32.boxes[i][a], d16.boxes[i][b]))
        same = d32.classes[i][a][:, None] == d16.classes[i][b][None, :]
        matched += int(((overlap >= 0.5) & same).any(axis=1).sum())
        total += int(a.sum())
    return {
        "raw_rel": raw_rel,
        "predictions": int(confident.sum()),
        "box_max_px": float(box.max(initial=0.0)),
        "box_mean_px": float(box.mean()) if box.size else 0.0,
        "score_max": float(score.max(initial=0.0)),
        "score_mean": float(score.mean()) if score.size else 0.0,
        "detections": total,
        "matched": matched / total if total else float("nan"),
    }


def measure(runs: dict, peer, rounds: int, iters: int) -> dict:
    """Median seconds per call of each of `runs` ((engine, measured) -> function) and of
    OpenCV's forward and detect, JAX and OpenCV alternating round by round; with OpenCV, each
    round starts with one untimed call of each (experiments/timing.py)."""
    options = {
        "score_threshold": NMS.score_threshold,
        "iou_threshold": NMS.iou_threshold,
        "top_k": NMS.pre_nms_top_k,
        "max_detections": NMS.max_detections,
    }
    opencv = ("forward", "detect") if peer else ()
    times = {key: [] for key in runs} | {("OpenCV", what): [] for what in opencv}
    for fn in runs.values():
        fn()  # warm-up
    for what in opencv:
        peer("time", what=what, iters=1, **options)
    for _ in range(rounds):
        for key, fn in runs.items():
            if peer:
                fn()  # settle
            times[key] += timed_calls(fn, iters)
        for what in opencv:
            answer = peer("time", what=what, iters=iters + 1, **options)
            times[("OpenCV", what)] += answer["times"][1:]
    return {key: statistics.median(t) for key, t in times.items()}


def table_rows(name: str, size: int, batch: int, medians: dict, flops: float) -> list[str]:
    """Markdown rows for one setting; `flops`: the fp32 forward pass's for the whole batch."""
    rows = []
    for (engine, what), seconds in medians.items():
        peer = medians.get(("OpenCV", what))
        ratio = f"{peer / seconds:.2f}" if peer else "n/a"
        rows.append(
            f"| {name} | {size} | {batch} | {engine} | {what} | {1e3 * seconds:.1f} "
            f"| {batch / seconds:.2f} | {flops / seconds / 1e9:.1f} | {ratio} |"
        )
    return rows


TABLE_HEADER = (
    "| model | size | batch | engine | measured | median ms | img/s | GFLOP/s | x OpenCV |\n"
    "|---|---:|---:|---|---|---:|---:|---:|---:|"
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _agreement_line(setting: str, a: dict) -> str:
    return (
        f"Agreement, {setting}: raw head outputs max |JAX - OpenCV| {a['raw_max_abs']:.2e} "
        f"({a['raw_rel']:.2e} of their largest magnitude); decoded boxes max "
        f"{a['box_max_px']:.2e} px ({a['boxes_compared']} kept by OpenCV); their scores max "
        f"{a['score_max_abs']:.2e} ({a['scores_compared']} compared)."
    )


def _bf16_line(setting: str, b: dict) -> str:
    return (
        f"bf16 vs fp32, {setting}: raw head outputs max |diff| {b['raw_rel']:.2e} of their "
        f"largest magnitude; {b['predictions']} predictions above {NMS.score_threshold}: box "
        f"corners max {b['box_max_px']:.2f} px, mean {b['box_mean_px']:.3f} px; score max "
        f"{b['score_max']:.4f}, mean {b['score_mean']:.5f}; {100 * b['matched']:.1f}% of the "
        f"{b['detections']} fp32 detections matched by a bf16 one (same class, IoU >= .5)."
    )


def benchmark_setting(args, name, models, predicts, variables, images, peer, folder, lines):
    """Agreement, bf16 accuracy and timing for one input size and batch; the table rows.
    ``variables`` maps each of ``models``' entries to its own (`prediction.prepare_variables`)."""
    batch, size = images.shape[:2]
    setting = f"{size}x{size}, batch {batch}"
    x = jax.device_put(jnp.asarray(images, jnp.float32) / 255.0)
    forwards = {
        d: jax.jit(functools.partial(m.apply, train=False)).lower(variables[d], x).compile()
        for d, m in models.items()
    }
    raw = {d: jax.device_get(f(variables[d], x)) for d, f in forwards.items()}
    if peer:
        np.save(os.path.join(folder, "images.npy"), images)
        peer("input", images=os.path.join(folder, "images.npy"))
        a = agreement(peer, models["float32"], raw["float32"], images, folder)
        lines.append(_agreement_line(setting, a))
        _log(lines[-1])
        if not a["raw_rel"] <= args.tolerance:
            if not args.weights:
                raise RuntimeError(f"JAX and OpenCV disagree: {lines[-1]}")
            # Trained weights: small BN variances make OpenCV's epsilon show (module docstring).
            lines.append(f"(Above --tolerance {args.tolerance}; not enforced with --weights.)")
            _log(lines[-1])
    bf16 = [d for d in args.dtypes if _dtype_entry(d)[0] == "bfloat16"]
    if bf16:
        d32 = jax.device_get(predicts["float32"](variables["float32"], images))
    for d in bf16:
        d16 = jax.device_get(predicts[d](variables[d], images))
        b = bf16_accuracy(models["float32"], raw["float32"], raw[d], d32, d16, size)
        lines.append(_bf16_line(f"{setting} ({_engine(d)})", b))
        _log(lines[-1])
    runs = {}
    if args.onnxruntime:
        session = onnxruntime_session(models["float32"], variables["float32"], size, args.threads)
        x_host = np.asarray(x)
        theirs = session.run(None, {"images": x_host})
        rel = max(
            float(np.abs(np.asarray(a) - b).max() / np.abs(np.asarray(a)).max())
            for a, b in zip(raw["float32"], theirs, strict=True)
        )
        lines.append(
            f"Agreement, {setting}: raw head outputs max |JAX - ONNX Runtime| {rel:.2e} of "
            "their largest magnitude."
        )
        _log(lines[-1])
        if not rel <= args.tolerance:
            raise RuntimeError(f"JAX and ONNX Runtime disagree: {lines[-1]}")
        runs[("ONNX Runtime", "forward")] = lambda: session.run(None, {"images": x_host})
    for d in args.dtypes:
        f, p, v = forwards[d], predicts[d], variables[d]
        engine = _engine(d)
        runs[(engine, "forward")] = lambda f=f, v=v: jax.block_until_ready(f(v, x))
        runs[(engine, "detect")] = lambda p=p, v=v: jax.device_get(p(v, images))
    medians = measure(runs, peer, args.rounds, args.iters)
    rows = table_rows(
        name, size, batch, medians, network_flops(models["float32"], variables["float32"], x)
    )
    _log("\n".join(rows))
    return rows


def onnxruntime_session(model: Network, variables, size: int, threads: int):
    """An ONNX Runtime session (CPU provider, ``threads`` intra-op threads) of ``model``
    exported by `yolov4_jax.deploy.onnx_export` at ``size`` x ``size``."""
    onnxruntime = onnx_export.onnxruntime
    base = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    proto = onnx_export.build_onnx(model, base, (size, size))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def benchmark_images(paths: list[str], size: int, count: int, seed: int) -> np.ndarray:
    """`count` uint8 RGB images [B, S, S, 3]: the files at `paths` (cycled, stretched to the
    input size as darknet does), else `scene_images`."""
    if not paths:
        return scene_images(size, count, seed)
    import cv2  # the project's OpenCV, for reading files only

    images = []
    for i in range(count):
        image = cv2.imread(paths[i % len(paths)], cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(paths[i % len(paths)])
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return np.stack(images)


def _dtype_entry(entry: str) -> tuple[str, str]:
    """(dtype, conv algorithm) of a `--dtypes` entry such as "float32:direct"."""
    dtype, _, algorithm = entry.partition(":")
    return dtype, algorithm or "auto"


def _engine(entry: str) -> str:
    """The table's engine name for a `--dtypes` entry ("JAX bfloat16, mkl convs")."""
    return "JAX " + entry.replace(":", ", ") + (" convs" if ":" in entry else "")


def _variant(model: Network, entry: str) -> Network:
    """`model` with the compute dtype and conv algorithm of a `--dtypes` entry."""
    return prediction.with_compute(model, *_dtype_entry(entry))


def run(args) -> str:
    """The whole benchmark; returns the report (Markdown)."""
    sizes, batches = [int(s) for s in args.sizes], [int(b) for b in args.batches]
    have_opencv = os.path.isdir(os.path.join(args.opencv_dir, "cv2"))
    if args.weights:  # trained weights: used as they are, through the same export
        model, fixed = darknet.load(args.cfg, args.weights)
        name, origin = os.path.basename(args.weights), "weights from file"
    else:
        model, fixed = Network(BUILDERS[args.model]()), None
        name, origin = args.model, "random weights"
    device = jax.devices()[0]
    params = count_params(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    lines = [
        f"{name} ({params / 1e6:.2f} M parameters, {origin}); JAX {jax.__version__} on "
        f"{device.platform} ({device.device_kind}); load average "
        f"{os.getloadavg()[0]:.2f} at start; medians of {args.rounds} rounds x {args.iters} "
        "calls per side.",
    ]
    if args.onnxruntime and (onnx_export.onnx is None or onnx_export.onnxruntime is None):
        args.onnxruntime = False
        lines.append(
            "onnx or onnxruntime is not installed (pip install onnx onnxruntime): "
            "no ONNX Runtime rows."
        )
        _log(lines[-1])
    elif args.onnxruntime:
        version = onnx_export.onnxruntime.__version__
        lines.append(f"ONNX Runtime {version} (CPU provider), {args.threads} threads.")
    if not have_opencv:
        lines.append(
            f"OpenCV 4 is not installed in {args.opencv_dir} (`{OPENCV_INSTALL}` installs it): "
            "JAX only, no agreement check, no `x OpenCV`."
        )
        _log(lines[-1])
    rows = []
    peer = OpenCVPeer(args.opencv_dir) if have_opencv else None
    try:
        with tempfile.TemporaryDirectory() as folder:
            for size in sizes:
                # The heads are calibrated on at least 8 scenes (on 1 or 2 the share of
                # confident boxes on other scenes ranged from 0 to a third); the timed
                # batches are the first of them.
                calibration = benchmark_images(args.images, size, max(8, *batches), seed=size)
                scenes = calibration[: max(batches)]
                variables = fixed if fixed is not None else detector_variables(model, calibration)
                cfg, weights = write_network(model, variables, folder, size)
                loaded, loaded_vars = darknet.load(cfg, weights)
                if peer:
                    info = peer("load", cfg=cfg, weights=weights, threads=args.threads)
                    if size == sizes[0]:
                        lines.append(f"OpenCV {info['version']}, {info['threads']} threads.")
                # float32 always: the agreement check and the FLOP count use it.
                models = {d: _variant(loaded, d) for d in ["float32", *args.dtypes]}
                # As detect and evaluate do: Winograd kernel transforms, and kernels in the
                # compute dtype, computed once.
                prepared = {
                    d: prediction.prepare_variables(m, loaded_vars) for d, m in models.items()
                }
                predicts = {
                    d: prediction.make_predict_fn(m, prediction.nms_options_for(m.heads))
                    for d, m in models.items()
                }
                for batch in batches:
                    rows += benchmark_setting(
                        args,
                        name,
                        models,
                        predicts,
                        prepared,
                        scenes[:batch],
                        peer,
                        folder,
                        lines,
                    )
    finally:
        if peer:
            peer.close()
    return "\n".join(lines + ["", TABLE_HEADER] + rows) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(BUILDERS), default="yolov4")
    parser.add_argument("--cfg", help="with --weights: a darknet network instead of --model")
    parser.add_argument("--weights", help="trained darknet weights (no random calibration)")
    parser.add_argument(
        "--images", type=lambda s: s.split(","), default=[], help="image files (default: scenes)"
    )
    parser.add_argument("--sizes", type=lambda s: s.split(","), default=["416", "608"])
    parser.add_argument("--batches", type=lambda s: s.split(","), default=["1", "8"])
    parser.add_argument(
        "--dtypes",
        type=lambda s: s.split(","),
        default=["float32", "bfloat16"],
        help="JAX compute dtypes (outputs are float32 either way), each optionally with "
        ":<model.conv_algorithm> (float32:direct)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2, help="calls per side per round")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--opencv_dir", default=OPENCV_DIR)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=2e-3,
        help="largest relative difference of the raw heads (tests/test_darknet_parity.py's)",
    )
    parser.add_argument(
        "--onnxruntime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the ONNX export in ONNX Runtime (pip install onnx onnxruntime)",
    )
    parser.add_argument("--out", help="also write the report to this Markdown file")
    args = parser.parse_args(argv)
    if bool(args.cfg) != bool(args.weights):
        parser.error("--cfg and --weights go together")
    for entry in args.dtypes:
        dtype, algorithm = _dtype_entry(entry)
        if dtype not in ("float32", "bfloat16") or algorithm not in CONV_ALGORITHMS:
            parser.error(
                f"--dtypes entry {entry!r}: expected float32 or bfloat16, optionally with "
                f":<{'|'.join(CONV_ALGORITHMS)}>"
            )
    report = run(args)
    print(report, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
