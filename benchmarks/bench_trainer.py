"""Step time of kubeforge's built-in training loop against a bare torch loop.

Same model (the mlp-classifier recipe), same data (digits), same batches, same optimizer, in the
same process; one CPU thread. Prints a table; the target is < 5% overhead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from kubeforge_trainer.config import resolve
    from kubeforge_trainer.train import DistInfo, Trainer

    tmp = tempfile.mkdtemp(prefix="kubeforge-bench-")
    doc = {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "bench"},
        "spec": {
            "model": {"recipe": "mlp-classifier"},
            "dataset": {"uri": "builtin://digits"},
            "hyperparameters": {
                "lr": 0.01,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "hidden": [256, 128],
                "seed": 0,
            },
            "output": {"uri": f"file://{tmp}"},
            "checkpoint": {"everyEpochs": 1, "resume": False},
        },
    }
    cfg = resolve(doc, env={})

    def built_in() -> tuple[float, float, int]:
        t = Trainer(cfg, None, DistInfo())
        steps0 = t.global_step
        loop = 0.0
        for epoch in range(1, args.epochs + 1):
            s = time.perf_counter()
            t.train_epoch(epoch)
            loop += time.perf_counter() - s
        t2 = Trainer(cfg, None, DistInfo())
        fit_start = time.perf_counter()
        t2.fit()  # full loop: + validation, progress report and checkpoint every epoch
        full = time.perf_counter() - fit_start
        return loop, full, t.global_step - steps0

    def bare() -> tuple[float, int]:
        t = Trainer(cfg, None, DistInfo())  # the same model, data and optimizer settings
        model, x, y = t.model, t.x_train, t.y_train
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        g = torch.Generator()
        n, b, steps = len(x), args.batch_size, 0
        model.train()
        s = time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            g.manual_seed(epoch)
            order = torch.randperm(n, generator=g)
            for i in range(math.ceil(n / b)):
                idx = order[i * b : (i + 1) * b]
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
        return time.perf_counter() - s, steps

    bare()
    built_in()  # warm up both
    rows = []
    for _ in range(args.repeats):  # interleaved, best of N: the machine is shared
        tb, sb = bare()
        tl, tf, sl = built_in()
        rows.append((tb / sb, tl / sl, tf / sl))
    # best of N per loop: the machine is shared, noise only ever adds time
    bare_step = min(r[0] for r in rows)
    loop_step = min(r[1] for r in rows)
    full_step = min(r[2] for r in rows)
    print(
        f"# bench_trainer: mlp-classifier on digits, {args.epochs} epochs x "
        f"{sl // args.epochs} steps, batch {args.batch_size}, 1 CPU thread, best of {args.repeats}"
    )
    print(f"{'loop':<44} {'step ms':>9} {'ratio':>7}")
    print(f"{'bare torch loop':<44} {bare_step * 1e3:>9.3f} {1.0:>7.3f}")
    print(
        f"{'kubeforge train_epoch (steps only)':<44} {loop_step * 1e3:>9.3f} "
        f"{loop_step / bare_step:>7.3f}"
    )
    print(
        f"{'kubeforge fit (+val, report, ckpt/epoch)':<44} {full_step * 1e3:>9.3f} "
        f"{full_step / bare_step:>7.3f}"
    )
    overhead = loop_step / bare_step - 1
    print(f"overhead of the built-in loop: {overhead * 100:+.1f}% (target < 5%)")
    if os.environ.get("KUBEFORGE_BENCH_STRICT") and overhead > 0.05:
        sys.exit(1)


if __name__ == "__main__":
    main()
