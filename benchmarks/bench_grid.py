"""Grid search cost per decision: kubeforge's arithmetic grid vs Optuna's GridSampler (which lists
every point and writes the whole grid into each trial's system attributes; issue 18).

Each row runs in a fresh process: the mean time per decision over 6 (kubeforge: rebuild the study
from the records and suggest, as the operator does; Optuna: one long-lived study with one
GridSampler, which favours Optuna: the operator used to build a GridSampler per decision), the
peak RSS added, and the size of the system attributes recorded on the last trial.
"""

from __future__ import annotations

import json
import subprocess
import sys

SIZES = [10_000, 100_000, 1_000_000, 5_000_001, 100_000_000]
OPTUNA_MAX = 1_000_000  # beyond this Optuna's grid takes minutes and gigabytes


def _one(impl: str, size: int) -> dict[str, float]:
    import resource
    import time

    import optuna
    from kubeforge.api.tuningstudy import TuningStudySpec
    from kubeforge.tuningstudy import search as S

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = (
        {"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 1.0 / (size - 1)}}
        if size <= 5_000_001
        else {"a": {"type": "int", "low": 0, "high": 9999}, "b": {"type": "int", "low": 0, "high": 9999}}
    )
    spec = TuningStudySpec.model_validate({
        "objective": {"metric": "loss"}, "searchSpace": space, "algorithm": {"name": "grid"},
        "trialTemplate": {"spec": {"command": ["train"]}},
    })
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if impl == "kubeforge":
        records: list[S.TrialRecord] = []
        for n in range(6):
            sug = S.SearchState(spec, records, "k").suggest()
            records.append(S.TrialRecord(number=n, params=sug.params, state="complete",
                                         final=1.0, system_attrs=sug.system_attrs))
        attrs = records[-1].system_attrs
    else:
        grid = {
            name: [p.grid_value(i) for i in range(p.grid_size())]
            for name, p in spec.search_space.items()
        }
        study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
        for _ in range(6):
            t = study.ask(S.distributions(spec))
            study.tell(t, 1.0)
        attrs = study.trials[-1].system_attrs
    seconds = (time.perf_counter() - start) / 6
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"ms": seconds * 1000, "rss_mb": rss, "attrs_bytes": len(json.dumps(attrs))}


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(_one(sys.argv[1], int(sys.argv[2]))))
        return
    print(f"{'grid points':>12} {'impl':>10} {'ms/decision':>12} {'peak RSS +MB':>13} "
          f"{'trial attrs B':>14}")
    for size in SIZES:
        for impl in ("kubeforge", "optuna"):
            if impl == "optuna" and size > OPTUNA_MAX:
                print(f"{size:>12,} {impl:>10} {'(skipped: minutes, gigabytes)':>41}")
                continue
            out = subprocess.run([sys.executable, __file__, impl, str(size)], check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out)
            print(f"{size:>12,} {impl:>10} {r['ms']:>12.1f} {r['rss_mb']:>13.1f} "
                  f"{r['attrs_bytes']:>14,}")


if __name__ == "__main__":
    main()
