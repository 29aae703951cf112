"""int8 against float on the digits MLP: latency ratio, size ratio, accuracy delta.

Trains the mlp-classifier recipe on digits once (seeded), exports it, quantizes it both ways
(dynamic-int8, static-int8 with 256 calibration rows) exactly as the trainer does for
`spec.output.onnx.quantize`, and measures every model with the trainer's own serving-cost code
(median batch-1 latency after warm-up, one CPU thread), plus batch-256 latency. Targets from
issue 22: latency ratio <= 0.7, size ratio <= 0.35, accuracy delta within 0.5 points.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch


def batch_latency_ms(model: bytes, x: np.ndarray, repeats: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feeds = {"input": np.ascontiguousarray(x, dtype=np.float32)}
    for _ in range(5):
        sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", default="256,128")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from kubeforge_trainer import quantize
    from kubeforge_trainer.config import resolve
    from kubeforge_trainer.export import export_onnx
    from kubeforge_trainer.report.cost import measure
    from kubeforge_trainer.train import DistInfo, Trainer

    hidden = [int(h) for h in args.hidden.split(",")]
    doc = {
        "kind": "TrainingJob",
        "metadata": {"name": "bench-quantize"},
        "spec": {
            "model": {"recipe": "mlp-classifier"},
            "dataset": {"uri": "builtin://digits"},
            "hyperparameters": {"lr": 0.01, "epochs": args.epochs, "hidden": hidden, "seed": 0},
            "output": {"uri": f"file://{tempfile.mkdtemp(prefix='kubeforge-bench-')}"},
            "checkpoint": {"resume": False, "everyEpochs": 0},
        },
    }
    trainer = Trainer(resolve(doc, env={}), None, DistInfo())
    trainer.fit()
    split = trainer.split
    float_model = export_onnx(trainer.model, split.x_val, opset=17, dynamic_batch=True)
    rows = split.x_train[np.random.default_rng(0).permutation(len(split.x_train))[:256]]
    models = {
        "float": float_model,
        "dynamic-int8": quantize.quantize(float_model, "dynamic-int8"),
        "static-int8": quantize.quantize(float_model, "static-int8", rows),
    }
    big = np.resize(split.x_val, (256, split.x_val.shape[1]))
    base: dict[str, float] = {}
    print(f"digits MLP hidden={hidden}, {args.epochs} epochs, one CPU thread, onnxruntime")
    head = (
        f"{'model':<13} {'bytes':>8} {'size':>6} {'b1 ms':>8} {'b1 ratio':>9} "
        f"{'b256 ms':>8} {'b256 ratio':>10} {'val acc':>8} {'delta pts':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, blob in models.items():
        cost = measure(blob, split.x_val[:1], threads=1)
        b256 = batch_latency_ms(blob, big, max(20, args.repeats // 10))
        acc = quantize.task_metrics(quantize.predict(blob, split.x_val), split.y_val, False)[
            "val_accuracy"
        ]
        if name == "float":
            base = {"bytes": cost["onnx_bytes"], "b1": cost["onnx_latency_ms"], "b256": b256}
            base["acc"] = acc
        print(
            f"{name:<13} {cost['onnx_bytes']:>8.0f} {cost['onnx_bytes'] / base['bytes']:>6.2f} "
            f"{cost['onnx_latency_ms']:>8.4f} {cost['onnx_latency_ms'] / base['b1']:>9.2f} "
            f"{b256:>8.3f} {b256 / base['b256']:>10.2f} {acc:>8.4f} "
            f"{(acc - base['acc']) * 100:>+9.2f}"
        )


if __name__ == "__main__":
    main()
