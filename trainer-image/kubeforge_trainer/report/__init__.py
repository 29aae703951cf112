"""Standard-library-only reporting: the progress channel and the ``kubeforge-report`` wrapper.

Everything under this package imports only the standard library, so it can be shipped as a
zipapp (``kubeforge-report.pyz``) into any image that has ``python3``.
"""

from .channel import (
    ProgressChannel,
    termination_message,
    write_termination_message,
)

__all__ = [
    "ProgressChannel",
    "termination_message",
    "write_termination_message",
]
