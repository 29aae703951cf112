"""The progress channel: training pods report to the operator's HTTPS endpoint; nobody gains RBAC.

A training pod gets a projected ServiceAccount token whose audience is kubeforge's own
(`Settings.progress_audience`, short-lived, bound to the pod), the endpoint's URL and the CA that
signed its certificate. Each report is a POST the operator authenticates with a TokenReview and
authorizes against the pod's place in the TrainingJob (`auth`); the operator then writes the
TrainingJob's status itself, coalesced by the TrainingJob's reconcile (`reports`). The answer
tells the trainer whether its TrainingJob asks it to stop. The wire format is in
docs/progress-protocol.md; the security argument in docs/security.md.

- `auth`: the decisions, as pure functions (TokenReview answer + pod + Job → allowed or why not);
- `reports`: the latest report of each TrainingJob, kept in memory until the status shows it;
- `server`: the aiohttp endpoint (TLS, body limit, per-pod rate limit, metrics);
- `legacy`: start-up removal of the Roles/RoleBindings older versions made for this channel.
"""

from kubeforge.progress.reports import ProgressReports

__all__ = ["ProgressReports"]
