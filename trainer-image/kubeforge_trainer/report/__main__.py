"""``python -m kubeforge_trainer.report -- CMD ARGS...`` is ``kubeforge-report``."""

from .cli import main

main()
