"""kubeforge's trainer: the built-in recipes and the tiny API for user scripts.

A user script (``model: {script: {path: /app/train.py}}``) reports through::

    from kubeforge_trainer import hyperparameters, output_dir, report, should_stop

    hp = hyperparameters()
    for epoch in range(1, int(hp.get("epochs", 10)) + 1):
        ...
        report(epoch, loss=loss, accuracy=acc)
        if should_stop():
            break

Importing this package imports only the standard library (torch is loaded by the trainer).
"""

from ._api import hyperparameters, output_dir, report, should_stop

__all__ = ["hyperparameters", "output_dir", "report", "should_stop"]
__version__ = "0.1.0"
