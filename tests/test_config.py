"""Settings: one name everywhere, the documented precedence, and one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import ROOT, job_env, run_job

from job.config import PRESETS, resolve
from job.errors import ConfigError


def test_precedence_defaults_preset_toml_env_flags(tmp_path: Path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "gpt2-40m"\nlr = 1e-3\nmax_iters = 100\nwarmup_iters = 7\n')
    dotenv = tmp_path / ".env"
    dotenv.write_text("JOB_MAX_ITERS=200\nJOB_WARMUP_ITERS=9  # from .env\nJOB_SEED='5'\n")
    cfg = resolve(flags={"max_iters": 300, "lr": None}, config_file=toml,
                  environ={"JOB_WARMUP_ITERS": "11"}, dotenv=dotenv)
    assert cfg.preset == "gpt2-40m"
    assert cfg.n_embd == PRESETS["gpt2-40m"]["n_embd"] == 384  # preset over default
    assert cfg.lr == 1e-3  # TOML over preset; an unset flag changes nothing
    assert cfg.max_iters == 300  # flag over env over TOML
    assert cfg.warmup_iters == 11  # the real environment over .env
    assert cfg.seed == 5  # .env over the default, quotes removed
    assert cfg.eval_iters == PRESETS["gpt2-40m"]["eval_iters"]


def test_env_names_and_types(tmp_path: Path):
    cfg = resolve(environ={"JOB_COMPILE": "true", "JOB_MAX_ITERS": "2e4", "JOB_PRICE_PER_KWH": "0.3",
                           "JOB_RUN": "night1"}, dotenv=None)
    assert cfg.compile is True and cfg.max_iters == 20000 and cfg.price_per_kwh == 0.3
    assert cfg.run_dir == Path("runs/night1")


@pytest.mark.e2e
def test_resolved_config_is_saved_with_the_run(small_env, tmp_path: Path):
    res = run_job(["train", "--run", "saved", "--max-iters", "2"], cwd=ROOT, env=small_env)
    assert res.returncode == 0, res.stderr
    saved = json.loads((Path(small_env["JOB_OUT_DIR"]) / "saved" / "config.json").read_text())
    assert saved["max_iters"] == 2 and saved["n_embd"] == 32 and saved["run"] == "saved"


# (flags, extra env, the setting the one-line error must name)
INVALID = [
    (["--n-embd", "30", "--n-head", "4"], {}, "n_embd"),
    (["--block-size", "1000000"], {}, "block_size"),
    (["--lr", "-1"], {}, "lr"),
    (["--min-lr", "1"], {}, "min_lr"),
    (["--preset", "gpt5"], {}, "preset"),
    (["--data", "/nonexistent/dataset"], {}, "data"),
    (["--keep-ckpts", "1"], {}, "keep_ckpts"),
    (["--dtype", "float8"], {}, "dtype"),
    (["--device", "tpu"], {}, "device"),
    (["--max-iters", "0"], {}, "max_iters"),
    (["--batch-size", "-4"], {}, "batch_size"),
    (["--stop-at", "25:00"], {}, "stop_at"),
    (["--max-runtime", "soon"], {}, "max_runtime"),
    (["--metrics-port", "70000"], {}, "metrics_port"),
    (["--run", "../escape"], {}, "run"),
    ([], {"JOB_MAX_ITERS": "lots"}, "max_iters"),
    ([], {"JOB_COMPILE": "maybe"}, "compile"),
]


@pytest.mark.e2e
@pytest.mark.parametrize("flags,env,name", INVALID, ids=[c[2] + str(i) for i, c in enumerate(INVALID)])
def test_invalid_setting_exits_2_with_one_line(flags, env, name, small_env):
    res = run_job(["train", "--run", "bad", *flags], cwd=ROOT, env={**small_env, **env}, timeout=60)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert name in lines[0] and "Traceback" not in res.stderr
    assert not (Path(small_env["JOB_OUT_DIR"]) / "bad" / "ckpt").exists(), "no work before validation"


@pytest.mark.e2e
def test_bad_toml_exits_2(tmp_path: Path, small_env):
    toml = tmp_path / "bad.toml"
    toml.write_text("max_itres = 5\n")
    res = run_job(["train", "--config", str(toml)], cwd=ROOT, env=small_env, timeout=60)
    assert res.returncode == 2 and "max_itres" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.e2e
def test_every_command_has_help():
    for cmd in ("prepare", "train", "status", "sample"):
        res = run_job([cmd, "--help"], cwd=ROOT, env=job_env(), timeout=60)
        assert res.returncode == 0 and "Example" in res.stdout, cmd


@pytest.mark.parametrize("text, said", [
    ("max_iters = 5\n[job]\nlr = 0.1\n", "config: {p} has settings both at the top level (max_iters) and under [job]; "
                                         "put them all under [job], or all at the top level"),
    ("[model]\nn_layer = 2\n", "config: [model] in {p} is not a table of settings; put settings at the top level "
                               "or under [job]"),
    ("max_iter = 5\n", "config: unknown setting 'max_iter' in {p}; did you mean max_iters?"),
    ("[job]\nwarmup_iter = 7\n", "config: unknown setting 'warmup_iter' in {p}; did you mean warmup_iters?"),
    ("learning_rate = 0.1\n", "config: unknown setting 'learning_rate' in {p}; `job train --help` lists every setting"),
], ids=["top level and [job]", "another table", "typo", "typo under [job]", "no near setting"])
def test_a_toml_setting_is_read_or_refused_never_dropped(tmp_path: Path, text: str, said: str):
    p = tmp_path / "run.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        resolve(config_file=p, environ={}, dotenv=None)
    assert str(e.value) == said.format(p=p)


@pytest.mark.parametrize("text", ["max_iters = 5\nlr = 0.1\n", "[job]\nmax_iters = 5\nlr = 0.1\n"],
                         ids=["flat", "under [job]"])
def test_a_toml_file_flat_or_under_job_reads_every_setting(tmp_path: Path, text: str):
    p = tmp_path / "run.toml"
    p.write_text(text)
    cfg = resolve(config_file=p, environ={}, dotenv=None)
    assert (cfg.max_iters, cfg.lr) == (5, 0.1)
