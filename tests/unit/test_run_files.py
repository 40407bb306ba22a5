"""Fast tier: what a run's files hold and who may write them (job/state.py, job/rundir.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from job.rundir import RunDir, RunLocked
from job.state import LoaderState, TrainState


def test_train_state_round_trips_and_its_summary_leaves_the_loader_out():
    st = TrainState(iteration=7, tokens=7168, elapsed_s=3.5, energy_j=12.0, restarts=2, val_loss=4.2,
                    loader=LoaderState(epoch=1, cursor=40))
    assert TrainState.from_state_dict(json.loads(json.dumps(st.state_dict()))) == st
    assert "loader" not in st.summary() and st.summary()["iteration"] == 7
    # a seal or DONE (summary only, plus its own keys) reads back with the loader at its default
    back = TrainState.from_state_dict({**st.summary(), "sha256": "x", "finished_at": 1.0})
    assert back.iteration == 7 and back.loader == LoaderState()


def test_done_and_config_round_trip(tmp_path: Path):
    run = RunDir(tmp_path / "r")
    assert run.read_done() is None and run.read_config() is None
    run.write_config({"max_iters": 30})
    run.write_done(TrainState(iteration=30, val_loss=5.1))
    assert run.read_config() == {"max_iters": 30}
    assert run.read_done().iteration == 30 and run.read_done().val_loss == 5.1
    run.clear_done()
    assert run.read_done() is None


def test_the_log_reader_understands_the_older_key_names(tmp_path: Path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.log_path.write_text(
        '{"event": "step", "iter": 3, "loss": 6.5, "time": 1}\n'
        '{"event": "step", "iteration": 4, "train_loss": 6.25, "time": 2}\n'
        '{"event": "eval", "iter": 4, "val_loss": 6.3, "time": 2}\n{"event": "st')  # cut by a kill
    events = run.last_events()
    assert events["step"]["iteration"] == 4 and events["step"]["train_loss"] == 6.25
    assert events["eval"] == {"event": "eval", "iteration": 4, "val_loss": 6.3, "time": 2}
    log = run.open_log()  # a cut last line: the next record starts on a line of its own
    log.write("step", iteration=5, train_loss=6.0)
    log.close()
    assert run.last_events()["step"]["iteration"] == 5


def test_a_held_run_lock_refuses_a_second_owner_and_names_the_holder(tmp_path: Path):
    run = RunDir(tmp_path / "r")
    with run.lock():
        assert (run.path / "lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunLocked, match=rf"run 'r' is in use by another `job train` \(pid {os.getpid()},"):
            with run.lock():
                pass
    with run.lock():  # released when its holder let go
        pass
