"""Credentials never leave the run in text: a key typed where a variable's name belongs is refused unseen, keys in
the judge's URL are masked in its messages, ``--print_config`` masks, and masking the written copies leaves the
run's own settings alone (a data path that contains a secret's value still loads)."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pytest
import yaml

from support.cli import fit_args, run_main
from lit_align.runs.checkpoint_io import load_checkpoint_file
from lit_align.evaluation import LLMJudge
from lit_align.runs.secrets import looks_like_key, mask_url, redact
from support.judge_server import FakeJudgeServer

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-proj-7Hq2ZfX9aLk3Vb81"
TOKEN = "hf_QmT4vLx82NcRa7PzYw"


def _evaluate_args(*judge: str) -> list[str]:
    return ["evaluate", "--config", str(ROOT / "configs" / "dpo.yaml"), "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false", "--trainer.default_root_dir=runs/eval",
            "--trainer.limit_predict_batches=1", "--data.init_args.eval_batch_size=2",
            "--predictions.sampling.max_new_tokens=4", "--output_dir=report", "--judge=LLMJudge",
            "--judge.model=m", "--judge.max_retries=0", *judge]


def _files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_key_typed_as_the_variable_name_is_refused_without_echoing_it(run_dir, capsys, monkeypatch):
    args = _evaluate_args("--judge.base_url=http://127.0.0.1:9/v1", f"--judge.api_key_env={KEY}")
    assert run_main(args) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-2] == (
        "lit-align: error: judge.api_key_env must be the NAME of the environment variable that holds the key, not "
        "the key itself (the value given looks like a key and is not shown): `export OPENAI_API_KEY=<key>` and set "
        "--judge.api_key_env=OPENAI_API_KEY")
    assert KEY not in err and KEY not in _files_text(run_dir)  # no config.yaml with it either
    monkeypatch.setenv("LIT_ALIGN_DEBUG", "1")
    with pytest.raises(Exception) as caught:
        run_main(args)
    assert KEY not in "".join(traceback.format_exception(caught.value))


def test_variable_names_pass_and_keys_do_not():
    for name in ("OPENAI_API_KEY", "JUDGE_KEY", "my_judge_key", "HF_TOKEN", "hf_token"):
        assert not looks_like_key(name), name
    for key in (KEY, TOKEN, "sk_live_51HxAbCdEfGhIjKl", "AKIAIOSFODNN7EXAMPLE", "a1b2c3d4e5f6a7b8c9d0e1f2", "my key"):
        assert looks_like_key(key), key


def test_mask_url_hides_passwords_and_key_parameters_only():
    assert mask_url("https://u:pa55@h.example/v1?key=abc&api-version=2024") == \
        "https://u:***@h.example/v1?key=***&api-version=2024"
    assert mask_url("http://tok123@h/v1?access_token=t&x") == "http://***@h/v1?access_token=***&x"
    assert mask_url("http://localhost:8000/v1") == "http://localhost:8000/v1"
    assert redact("see http://u:pw@h/x?token=zz.") == "see http://u:***@h/x?token=***"  # "." is part of the URL


def test_judge_url_credentials_are_sent_but_never_shown(run_dir, capsys):
    with FakeJudgeServer() as server:
        host = server.url.split("://", 1)[1]
        judge = LLMJudge(f"http://bob:{KEY}@{host}?key={TOKEN}", "m", api_key_env=None, max_retries=0)
        assert judge.compare("p", "longer", "short").win == 1.0
    request = server.requests[0]
    assert request["path"] == f"/v1/chat/completions?key={TOKEN}"  # the query string stays last
    assert request["auth"].startswith("Basic ")  # user:password@ travels as basic authentication
    # A failing request through the real command: its message (a traceback here) shows the URL masked.
    args = _evaluate_args(f"--judge.base_url=http://bob:{KEY}@127.0.0.1:9/v1?key={TOKEN}", "--judge.api_key_env=null")
    with pytest.raises(RuntimeError) as caught:
        run_main(args)
    shown = "".join(traceback.format_exception(caught.value)) + capsys.readouterr().err
    # (user:password went into the Authorization header, so the request URL has none)
    assert "judge request to http://127.0.0.1:9/v1/chat/completions?key=*** failed: URLError: " in shown
    assert KEY not in shown and TOKEN not in shown
    assert KEY not in _files_text(run_dir) and TOKEN not in _files_text(run_dir)


def test_print_config_masks_secret_values(capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    code = run_main(["fit", "--config", str(ROOT / "configs" / "dpo.yaml"), f"--model.policy.init_args.reference_cache_dir=c-{KEY}",
                     "--print_config"])
    printed = capsys.readouterr().out
    assert code == 0
    assert yaml.safe_load(printed)["model"]["init_args"]["policy"]["init_args"]["reference_cache_dir"] == "c-***"
    assert KEY not in printed


def test_data_path_containing_a_secret_value_still_loads_and_written_copies_are_masked(run_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    data = run_dir / f"pairs-{TOKEN}.jsonl"
    rows = [{"prompt": f"Q{i}:", "chosen": " yes.", "rejected": " no."} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = fit_args("dpo.yaml", f"--data.path={data.name}", "--data.val_split=null", "--data.batch_size=4",
                    "--export.enabled=false", steps=1)
    assert run_main(args) == 0
    hparams = next(run_dir.glob("runs/test/logs/**/hparams.yaml")).read_text()
    config = next(run_dir.glob("runs/test/logs/**/config.yaml")).read_text()
    assert "pairs-***.jsonl" in hparams and "pairs-***.jsonl" in config
    checkpoint = load_checkpoint_file(run_dir / "runs/test/checkpoints/last.ckpt")
    assert checkpoint["datamodule_hyper_parameters"]["path"] == "pairs-***.jsonl"
    for path in run_dir.joinpath("runs").rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".csv", ".json", ".jsonl", ".txt"):
            assert TOKEN not in path.read_text(errors="replace"), path
