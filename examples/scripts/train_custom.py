"""A user script for `model: {script: {path: /app/train.py}}` (or run under kubeforge-report).

It reads its hyperparameters, reports once per epoch, honours a stop request (pruned trial or
SIGTERM) and writes model.onnx itself into output_dir().
"""

from __future__ import annotations

import os

from kubeforge_trainer import hyperparameters, output_dir, report, should_stop

hp = hyperparameters()
epochs = int(hp.get("epochs", 5))
lr = float(hp.get("lr", 0.1))

loss = 1.0
for epoch in range(1, epochs + 1):
    loss *= 1.0 - min(lr, 0.9)  # stand-in for a real training epoch
    report(epoch, loss=loss, accuracy=1.0 - loss / 2)
    if should_stop():
        break

if hp.get("write_model"):
    import torch

    model = torch.nn.Linear(4, 2).eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 4),),
        os.path.join(output_dir(), "model.onnx"),
        input_names=["input"],
        output_names=["output"],
        dynamo=False,
    )
