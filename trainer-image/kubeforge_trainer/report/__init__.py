"""Standard-library-only reporting: the progress channel and the ``kubeforge-report`` wrapper.

Everything under this package imports only the standard library, so it can be shipped as a
zipapp (``kubeforge-report.pyz``) into any image that has ``python3``.
"""

from .channel import (
    PROGRESS_ANNOTATION,
    STOP_ANNOTATION,
    ProgressChannel,
    termination_message,
    write_termination_message,
)

__all__ = [
    "PROGRESS_ANNOTATION",
    "STOP_ANNOTATION",
    "ProgressChannel",
    "termination_message",
    "write_termination_message",
]
