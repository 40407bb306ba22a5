"""Fast tier: `job report` draws the history the newest state embodies, from a log that also holds
the steps a crash lost and the run then redid."""

from __future__ import annotations

from job.timeline import timeline


def step(it: int, loss: float) -> dict:
    return {"event": "step", "iteration": it, "tokens": 100 * it, "elapsed_s": float(it), "train_loss": loss}


def test_steps_redone_after_a_crash_replace_the_lost_ones_and_restarts_are_marked():
    records = [
        {"event": "start", "iteration": 0},
        step(1, 9.0), step(2, 8.0), {"event": "eval", "iteration": 3, "val_loss": 7.5}, step(3, 7.0),
        {"event": "checkpoint", "iteration": 3},
        step(4, 6.0), {"event": "eval", "iteration": 5, "val_loss": 5.5}, step(5, 5.0),  # lost: killed at 5
        {"event": "resume", "iteration": 3},
        step(4, 6.1), {"event": "eval", "iteration": 5, "val_loss": 5.6}, step(5, 5.1),
        {"event": "stop", "iteration": 5, "reason": "SIGTERM"},
        {"event": "resume", "iteration": 5}, step(6, 4.9),
    ]
    t = timeline(records)
    assert [(s["iteration"], s["train_loss"]) for s in t.steps] == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.1),
                                                                   (5, 5.1), (6, 4.9)]
    assert [(e["iteration"], e["val_loss"]) for e in t.evals] == [(3, 7.5), (5, 5.6)]
    assert t.marks == [("resume", 3), ("stop", 5), ("resume", 5)]
    assert list(t.at([3, 5], "tokens")) == [300.0, 500.0]


def test_a_roll_back_redoes_steps_without_a_resume_record():
    records = [step(1, 9.0), step(2, 8.0), step(3, float("nan")), {"event": "rollback", "iteration": 3},
               step(3, 7.0)]
    t = timeline(records)
    assert [s["train_loss"] for s in t.steps] == [9.0, 8.0, 7.0]
    assert t.marks == [("rollback", 3)]
