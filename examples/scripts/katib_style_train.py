"""A Katib-style training program (standard library only): hyperparameters come in as flags,
metrics go out as `name=value` lines on stdout. Used by examples/trainingjob-byo-katib-style.yaml:

    kubectl create configmap byo-train-script --from-file=train.py=examples/scripts/katib_style_train.py
"""

import argparse
import time

ap = argparse.ArgumentParser()
ap.add_argument("--lr", type=float, default=0.01)
ap.add_argument("--epochs", type=int, default=5)
args = ap.parse_args()

print(f"training with lr {args.lr} for {args.epochs} epochs", flush=True)
for epoch in range(1, args.epochs + 1):
    time.sleep(0.01)  # the training step
    accuracy = min(0.99, 0.5 + 5 * args.lr - 0.05 * (args.epochs - epoch))
    print(f"epoch={epoch} accuracy={accuracy:.4f} loss={1 - accuracy:.4f}", flush=True)
