"""`specplan tune` (issue 15): a measured Optuna study on a tiny random Llama with grouped
prompts; resume to a total, fingerprint refusal, failing set-ups, storages (two workers on
a fresh SQLite file and on a PostgreSQL server), Ctrl-C, and one-line storage errors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from planner.cli import cli
from planner.plan.schema import load_plan
from planner.tune.request import split_prompts
import planner.tune.study  # noqa: F401  (loaded for monkeypatching by name in sys.modules)

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [("the cat sat on the mat", "a"), ("abcabcabcabcabc", "a"), ("hello hello hello", "a"),
           ("def f(x): return x", "b"), ("1 2 3 4 5 6 7", "b"), ("xyz xyz xyz xyz", "b")]


@pytest.fixture()
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "group": g}) + "\n" for p, g in PROMPTS))
    return path


def _args(model, prompts, out, *extra) -> list[str]:
    return ["tune", "--model", str(model), "--prompts", str(prompts), "--profile", "a10g", "--device", "cpu",
            "--dtype", "fp32", "--max-new-tokens", "8", "--rounds", "1", "--out", str(out), *map(str, extra)]


def _trials(storage: str, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def test_tune_writes_a_plan_checked_on_held_out_prompts_resumes_and_refuses_another_fingerprint(tu_model, prompts, tmp_path):
    out = tmp_path / "plan.yaml"
    result = CliRunner().invoke(cli, _args(tu_model, prompts, out, "--objective", "worst-group", "--trials", 5))
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    t = plan.tuning
    assert (t.objective, t.tuning_prompts, t.held_out_prompts) == ("worst-group", 2, 4)
    assert [g.group for g in t.groups] == ["a", "b"] and all(g.held_out is not None for g in t.groups)
    assert t.held_out_speedup is not None and plan.measured["identical"] is True
    assert plan.search.trials == 5 and plan.search.storage == f"sqlite:///{tmp_path / 'plan.study.db'}"
    # measured set-ups are the plan's figures; autoregressive decoding's come from the calibrated step
    assert plan.prediction.basis == ("calibrated" if plan.decoding.method == "autoregressive" else "measured")
    assert {a.prediction.basis for a in plan.alternatives} <= {"measured"}
    for name in ("plan.tune.md", "plan.acceptance.png", "plan.trials.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / "plan.tune.md").read_text()
    assert "## Speedup per prompt group" in report and "| a |" in report and "| b |" in report
    assert "held-out" in result.output and "mean-optimal: held-out" in result.output

    trials = _trials(plan.search.storage, plan.search.study)
    assert len(trials) == 5 and trials[0].user_attrs.get("seed")  # the analytical bests come first
    for trial in trials:
        if trial.state.name == "COMPLETE":  # worst-group: the value is the slowest group's speedup
            assert trial.value == pytest.approx(min(v for _, v in trial.user_attrs["measured"]["groups"]))

    again = CliRunner().invoke(cli, _args(tu_model, prompts, out, "--objective", "worst-group", "--trials", 7))
    assert again.exit_code == 0, again.output
    resumed = _trials(plan.search.storage, plan.search.study)
    assert len(resumed) == 7 and [t.params for t in resumed[:5]] == [t.params for t in trials]
    assert load_plan(out).search.trials == 7

    other = tmp_path / "other.jsonl"
    other.write_text('{"prompt": "something else entirely"}\n{"prompt": "and more"}\n')
    refused = CliRunner().invoke(cli, _args(tu_model, other, out, "--objective", "worst-group", "--trials", 8,
                                            "--study", plan.search.study))
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
    assert f"--study {plan.search.study}" in refused.output and "holds another search (prompts" in refused.output
    assert len(_trials(plan.search.storage, plan.search.study)) == 7


def test_a_set_up_whose_output_differs_fails_its_trial_and_the_plan_stays_autoregressive(tu_model, prompts, tmp_path,
                                                                                         monkeypatch):
    from planner.runtime import run
    from planner.runtime.drafters import Autoregressive

    decode = run.DecodingBench._decode

    def corrupted(self, drafter, ids, max_new_tokens=None):
        g = decode(self, drafter, ids, max_new_tokens)
        return g if isinstance(drafter, Autoregressive) else dataclasses.replace(g, tokens=g.tokens[:-1] + (g.tokens[-1] ^ 1,))

    monkeypatch.setattr(run.DecodingBench, "_decode", corrupted)
    study_module = sys.modules["planner.tune.study"]  # `planner.tune` is the function (planner's public surface)
    monkeypatch.setattr(study_module, "PRUNE_MEASURED_BELOW", 0.0)  # every set-up decoded in full
    monkeypatch.setattr(study_module, "PRUNE_PREDICTED_BELOW", 0.0)
    out = tmp_path / "plan.yaml"
    result = CliRunner().invoke(cli, _args(tu_model, prompts, out, "--trials", 3, "--methods", "layer_skip,prompt_lookup"))
    assert result.exit_code == 0, result.output
    trials = _trials(load_plan(out).search.storage, load_plan(out).search.study)
    measured = [t for t in trials if "measured" in t.user_attrs]
    assert len(measured) == 3 and all(t.state.name == "FAIL" for t in measured)
    assert {t.user_attrs["why"] for t in measured} == {"output differs from autoregressive decoding"}
    assert load_plan(out).decoding.method == "autoregressive"


def test_a_trial_pruned_after_a_round_keeps_what_it_measured_and_the_calibration_fits_it(tu_model, prompts, tmp_path,
                                                                                         monkeypatch):
    from planner.tune.calibration import load_calibration

    study_module = sys.modules["planner.tune.study"]
    monkeypatch.setattr(study_module, "PRUNE_MEASURED_BELOW", 100.0)  # every measured set-up pruned after its first round
    out = tmp_path / "plan.yaml"
    result = CliRunner().invoke(cli, _args(tu_model, prompts, out, "--trials", 2, "--methods", "layer_skip,prompt_lookup",
                                           "--rounds", 2))  # the last --rounds counts
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    trials = _trials(plan.search.storage, plan.search.study)
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    for t in trials:
        m = t.user_attrs["measured"]
        assert m["rounds"] == 1 and m["speedup"] == pytest.approx(t.intermediate_values[0]) and m["autoregressive_ms"] > 0
        assert t.user_attrs["why"] == f"1 round(s) measured {m['speedup']:.2f}x, under 100x"
    assert plan.decoding.method == "autoregressive" and "calibration fitted to 2 measured trials" in result.output
    assert plan.prediction.basis == "calibrated"
    assert load_calibration(tmp_path / "plan.calibration.yaml").fit.trials == 2


def test_prompts_split_per_group_keeping_one_of_each_for_tuning():
    tuning, held = split_prompts(PROMPTS + [("alone", "c")], 0.5)
    assert [p for p, _ in held] == ["abcabcabcabcabc", "hello hello hello", "1 2 3 4 5 6 7", "xyz xyz xyz xyz"]
    assert [g for _, g in tuning] == ["a", "b", "c"]
    assert split_prompts(PROMPTS, 0.0) == (PROMPTS, [])


def _worker(args, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, "cli.py", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _two_workers_share_one_study(tu_model, prompts, tmp_path, storage: str, total: int = 4):
    """Two processes started together on one study: both finish, the study holds `total`
    finished trials (one more when both were mid-trial as it reached the total), each once."""
    procs = [_worker(_args(tu_model, prompts, tmp_path / f"w{i}.yaml", "--trials", total, "--storage", storage,
                           "--study", "shared")) for i in range(2)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    trials = _trials(storage, "shared")
    finished = [t for t in trials if t.state.is_finished()]
    assert len(finished) == len(trials) and total <= len(finished) <= total + 1
    assert len({t.number for t in trials}) == len(trials)
    workers = {t.user_attrs["worker"] for t in finished}
    assert 1 <= len(workers) <= 2
    for i in range(2):  # each plan ranks the whole study
        assert load_plan(tmp_path / f"w{i}.yaml").search.trials >= total


def test_two_workers_start_together_on_a_fresh_sqlite_study(tu_model, prompts, tmp_path):
    _two_workers_share_one_study(tu_model, prompts, tmp_path, f"sqlite:///{tmp_path / 'study.db'}")


def test_two_workers_share_a_study_on_postgresql(tu_model, prompts, tmp_path, tu_postgres):
    _two_workers_share_one_study(tu_model, prompts, tmp_path, tu_postgres)


def _states(db: Path) -> dict:
    try:
        with sqlite3.connect(db, timeout=0.5) as con:
            return dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    except sqlite3.Error:
        return {}


def test_ctrl_c_fails_the_running_trial_keeps_the_finished_ones_and_exits_130(tu_model, prompts, tmp_path):
    db, out = tmp_path / "study.db", tmp_path / "plan.yaml"
    args = _args(tu_model, prompts, out, "--trials", 1000, "--storage", f"sqlite:///{db}", "--study", "s")
    args[args.index("--rounds") + 1] = "3"
    proc = _worker(args)
    deadline = time.monotonic() + 120
    while _states(db).get("COMPLETE", 0) + _states(db).get("PRUNED", 0) < 1 and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.rstrip("\n").split("\n")[-1].split("\r")[-1] == "interrupted" and "Traceback" not in stderr
    assert not out.exists()
    trials = _trials(f"sqlite:///{db}", "s")
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) >= 1
    assert {t.user_attrs.get("why") for t in trials if t.state.name == "FAIL"} <= {"interrupted"}


@pytest.mark.parametrize("storage, message", [
    ("postgresql://postgres@127.0.0.1:1/optuna", "--storage postgresql://postgres@127.0.0.1:1/optuna: "),
    ("mysql://user@127.0.0.1/optuna", "its database driver is not installed"),
    ("not a url", "neither a database URL nor a journal file name"),
])
def test_storage_errors_are_one_line(tu_model, prompts, tmp_path, storage, message):
    result = CliRunner().invoke(cli, _args(tu_model, prompts, tmp_path / "plan.yaml", "--trials", 2, "--storage", storage))
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert not (tmp_path / "plan.yaml").exists()


@pytest.mark.parametrize("storage, message", [
    ("nosuchdb://host/x", "SQLAlchemy knows no database 'nosuchdb'"),
    ("mysql://user@127.0.0.1/optuna", "its database driver is not installed"),
    ("sqlite:///{tmp}/no/dir/study.db", "no directory {tmp}/no/dir"),
    ("sqlite:////proc/study.db", "/proc/study.db: cannot write ("),
    ("{tmp}/no/dir/study.log", "no directory {tmp}/no/dir"),
])
def test_a_bad_storage_is_refused_before_the_model_loads_or_the_device_is_profiled(tmp_path, monkeypatch, storage, message):
    monkeypatch.setattr("planner.models.load_model_spec", lambda *a, **k: pytest.fail("loaded the model first"))
    monkeypatch.setattr("planner.hardware.profile_device", lambda *a, **k: pytest.fail("profiled the device first"))
    storage, message = (text.replace("{tmp}", str(tmp_path)) for text in (storage, message))
    result = CliRunner().invoke(cli, ["tune", "--device", "cpu", "--storage", storage, "--out", str(tmp_path / "plan.yaml")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and f"--storage {storage}" in result.output and message in result.output
    assert list(tmp_path.iterdir()) == []


def test_the_plan_is_the_best_value_among_set_ups_whose_every_round_beat_autoregressive():
    from planner.plan.schema import Decoding
    from planner.tune import Measured, choose

    def trial(number, value, speedup, low):
        return Measured(number, "complete", Decoding("prompt_lookup", gamma=number + 1), 1.0, value, speedup, (low, speedup),
                        (), 1.5, (), "")

    noisy, steady, robust = trial(0, 1.3, 1.3, 0.95), trial(1, 1.1, 1.2, 1.05), trial(2, 1.15, 1.15, 1.02)
    assert choose([noisy, steady, robust]) == (robust, noisy)  # worst-group value 1.15 wins; mean-optimal is 1.3
    assert choose([noisy]) == (None, noisy)
