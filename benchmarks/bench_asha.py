"""Successive halving (ASHA) against no pruning: trials to a target and epochs spent.

Synthetic learning curves stand in for training (so the figures measure the search, not the
machine): a trial's parameters (lr, width) fix its final validation loss and its curve
`loss(epoch) = final + (start - final) * exp(-epoch / 4)`, 27 epochs at most. Trials run one after
the other; every pruning decision goes through the operator's own code (a study rebuilt from the
trial records, `SearchState.should_prune`), asked at each rung (epochs 1, 3, 9 with
`startStep: 1`, `reduction_factor: 3`: where successive halving can decide). Same TPE seeds for
both arms. Prints, per arm: epochs spent in all, trials until the best final loss reached the
target, and the best loss found.
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

EPOCHS = 27
RUNGS = (1, 3, 9)


def final_loss(p: dict[str, Any]) -> float:
    return 0.05 + 0.4 * (math.log10(p["lr"]) + 2.0) ** 2 + 0.2 / math.sqrt(p["width"])


def curve(p: dict[str, Any], epoch: int) -> float:
    final = final_loss(p)
    return final + (2.5 - final) * math.exp(-epoch / 4)


def run(pruner: str, seed: int, trials: int, target: float) -> tuple[int, int | None, float]:
    from kubeforge.api.tuningstudy import TuningStudySpec
    from kubeforge.tuningstudy.search import SearchState, TrialRecord

    es: dict[str, Any] = {"name": "none"}
    if pruner == "successive-halving":
        es = {"name": pruner, "startStep": 1, "settings": {"reduction_factor": 3}}
    spec = TuningStudySpec.model_validate(
        {
            "objective": {"metric": "val_loss", "direction": "minimize"},
            "searchSpace": {
                "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
                "width": {"type": "int", "low": 8, "high": 512, "log": True},
            },
            "algorithm": {"name": "tpe", "seed": seed},
            "earlyStopping": es,
            "maxTrials": trials,
            "trialTemplate": {"spec": {"command": ["train"]}},
        }
    )
    records: list[TrialRecord] = []
    epochs_spent = 0
    reached_at: int | None = None
    best = math.inf
    for n in range(trials):
        s = SearchState(spec, records, "bench/asha").suggest()
        rec = TrialRecord(
            number=n,
            params=s.params,
            system_attrs=s.system_attrs,
            study_system_attrs=s.study_system_attrs,
        )
        records.append(rec)
        pruned = False
        for epoch in range(1, EPOCHS + 1):
            rec.reports.append((epoch, curve(s.params, epoch)))
            epochs_spent += 1
            if pruner != "none" and epoch in RUNGS:
                prune, attrs = SearchState(spec, records, "bench/asha").should_prune(n)
                rec.system_attrs = attrs
                if prune:
                    pruned = True
                    break
        if pruned:
            rec.state = "pruned"
            continue
        rec.state, rec.final = "complete", rec.reports[-1][1]
        best = min(best, rec.final)
        if reached_at is None and best <= target:
            reached_at = n + 1
    return epochs_spent, reached_at, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.08)
    args = ap.parse_args()
    print(
        f"synthetic curves, {EPOCHS} epochs a trial, {args.trials} TPE trials, seeds 0..{args.seeds - 1}, "
        f"target val_loss <= {args.target}"
    )
    head = f"{'pruner':<20} {'epochs spent':>12} {'vs none':>8} {'trials to target':>17} {'best loss':>10}"
    print(head)
    print("-" * len(head))
    base = None
    for pruner in ("none", "successive-halving"):
        runs = [run(pruner, seed, args.trials, args.target) for seed in range(args.seeds)]
        epochs = statistics.mean(r[0] for r in runs)
        reached = [r[1] for r in runs if r[1] is not None]
        to_target = (
            f"{statistics.mean(reached):.1f} ({len(reached)}/{len(runs)})" if reached else "never"
        )
        base = epochs if base is None else base
        print(
            f"{pruner:<20} {epochs:>12.0f} {epochs / base:>7.2f}x {to_target:>17} "
            f"{statistics.mean(r[2] for r in runs):>10.4f}"
        )


if __name__ == "__main__":
    main()
