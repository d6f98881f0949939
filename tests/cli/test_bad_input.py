"""Malformed input through the real CLI: each case ends in ONE message naming the problem, or in a count of what
was skipped where skipping is the documented behaviour.

Every case runs ``lit_align.cli.app.main`` in-process (the console script's entry point, so exit status and stderr
are the user's), on the tiny default with a one-step fit. One case runs the ``lit-align`` console script as a
subprocess to check the exit status and the absence of a traceback end to end.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from support.cli import fit_args, run_main
from lit_align.cli.app import main

GOOD = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}


def jsonl(*rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@dataclass
class Case:
    """One malformed input: files to write, CLI arguments, and what the user must be told."""

    id: str
    args: list[str]
    expect: list[str]  # substrings of the message (error) or of the printed summary (skip)
    files: dict[str, bytes] = field(default_factory=dict)
    config: str = "dpo.yaml"
    skipped: bool = False  # documented behaviour is to go on, counting what was dropped or truncated


DATA = ["--data.path=data.jsonl"]
CASES = [
    Case("missing-column", DATA, ["data.jsonl, row 0: missing field 'rejected'"],
         {"data.jsonl": jsonl({"prompt": "a", "chosen": "b"})}),
    Case("misnamed-column", DATA, ["row 0: missing field 'rejected'", "'response_b'", "`columns`"],
         {"data.jsonl": jsonl({"prompt": "a", "chosen": "b", "response_b": "c"})}),
    Case("column-mapping-to-absent-column", DATA + ['--data.columns={"answer_a": "chosen"}'],
         ["row 0: missing field 'chosen' (after the column mapping"],
         {"data.jsonl": jsonl({"prompt": "a", "good": "b", "rejected": "c"})}),
    Case("non-string-value", DATA, ["data.jsonl, row 1: field 'chosen' must be a string, got int"],
         {"data.jsonl": jsonl(GOOD, {**GOOD, "chosen": 5})}),
    Case("null-value", DATA, ["data.jsonl, row 1: field 'rejected' is null"],
         {"data.jsonl": jsonl(GOOD, {**GOOD, "rejected": None})}),
    Case("empty-prompt", DATA, ["data.jsonl, row 1: field 'prompt' is empty"],
         {"data.jsonl": jsonl(GOOD, {**GOOD, "prompt": ""})}),
    Case("empty-completion", DATA, ["data.jsonl, row 0: field 'rejected' is empty"],
         {"data.jsonl": jsonl({**GOOD, "rejected": "   "})}),
    Case("truncated-last-line", DATA, ["data.jsonl, line 3: not valid JSON", "truncated"],
         {"data.jsonl": jsonl(GOOD, GOOD) + b'{"prompt": "a", "chosen": "b", "rej'}),
    Case("not-utf8", DATA, ["data.jsonl, line 2: not valid UTF-8"],
         {"data.jsonl": jsonl(GOOD) + b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n'}),
    Case("line-not-an-object", DATA, ["data.jsonl, line 2: expected a JSON object, got list"],
         {"data.jsonl": jsonl(GOOD) + b'["a", "b", "c"]\n'}),
    Case("empty-file", DATA, ["data.jsonl is empty"], {"data.jsonl": b"\n\n"}),
    Case("missing-file", ["--data.path=nowhere.jsonl"], ["data file nowhere.jsonl does not exist"]),
    Case("val-split-of-a-single-file", DATA + ["--data.val_split=validation"],
         ["data.jsonl is a single file with one split, so val_split='validation' cannot be read from it", "val_path",
          "val_fraction"], {"data.jsonl": jsonl(GOOD)}),
    Case("duplicate-key", DATA, ["data.jsonl, line 2: duplicate key 'chosen'"],
         {"data.jsonl": jsonl(GOOD) + b'{"prompt": "a", "chosen": "b", "chosen": "x", "rejected": "c"}\n'}),
    Case("pretty-printed-json", DATA, ["data.jsonl: this looks like a pretty-printed JSON file"],
         {"data.jsonl": json.dumps(GOOD, indent=2).encode()}),
    Case("column-mapping-onto-an-existing-column", DATA + ['--data.columns={"question": "prompt"}'],
         ["columns maps 'question' to 'prompt', but the data already has a 'prompt' column"],
         {"data.jsonl": jsonl({**GOOD, "question": "q"})}),
    Case("only-identical-pairs", DATA, ["no usable rows", "dropped 2 with chosen == rejected"],
         {"data.jsonl": jsonl({**GOOD, "rejected": GOOD["chosen"]}, {**GOOD, "rejected": GOOD["chosen"]})}),
    Case("chosen-equals-rejected", DATA, ["kept 2 of 3 rows (dropped 1 with chosen == rejected"],
         {"data.jsonl": jsonl(GOOD, {**GOOD, "rejected": GOOD["chosen"]}, GOOD)}, skipped=True),
    Case("prompt-longer-than-max", DATA + ["--data.max_prompt_length=8", "--data.max_length=32"],
         ["kept 2 of 2 rows", "truncated 1 prompts, 0 completions"],
         {"data.jsonl": jsonl(GOOD, {**GOOD, "prompt": "word " * 40})}, skipped=True),
    Case("completion-cut-by-truncation", DATA + ["--data.max_prompt_length=8", "--data.max_length=9"],
         ["kept 2 of 2 rows", "truncated 1 prompts, 2 completions"],
         # row 0: <s> a | b </s> fits in 9 tokens; row 1: prompt cut to 8, leaving 1 token for each completion
         {"data.jsonl": jsonl({"prompt": "a", "chosen": "b", "rejected": "c"},
                              {"prompt": "word " * 40, "chosen": "yes " * 20, "rejected": "no " * 20})},
         skipped=True),
    Case("max-prompt-length-leaves-no-room", DATA + ["--data.max_prompt_length=16", "--data.max_length=16"],
         ["max_prompt_length (16) must be smaller than max_length (16)"], {"data.jsonl": jsonl(GOOD)}),
    Case("invalid-row-skipped", DATA + ["--data.invalid_rows=skip"], ["kept 2 of 3 rows", "1 invalid"],
         {"data.jsonl": jsonl(GOOD, {**GOOD, "chosen": ""}, GOOD)}, skipped=True),
    Case("unknown-role", DATA, ["data.jsonl, row 0: chosen[1] has unknown role 'robot'"],
         {"data.jsonl": jsonl({"prompt": [{"role": "user", "content": "hi"}],
                               "chosen": [{"role": "assistant", "content": "a"}, {"role": "robot", "content": "b"}],
                               "rejected": [{"role": "assistant", "content": "c"}]})}),
    Case("no-chat-template", DATA + ["--data.tokenizer=nochat"], ["needs a tokenizer with a chat template", "nochat"],
         {"data.jsonl": jsonl({"prompt": [{"role": "user", "content": "hi"}],
                               "chosen": [{"role": "assistant", "content": "a"}],
                               "rejected": [{"role": "assistant", "content": "c"}]})}),
    Case("completion-ends-with-user-turn", DATA,
         ["data.jsonl, row 0: chosen[1] is a 'user' turn, but the completion must end with the assistant's reply"],
         {"data.jsonl": jsonl({"prompt": [{"role": "user", "content": "hi"}],
                               "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
                               "rejected": [{"role": "assistant", "content": "c"}]})}),
    Case("max-prompt-length-only-bos", DATA + ["--data.max_prompt_length=1"],
         ["max_prompt_length (1) leaves room only for the tokenizer's BOS token '<s>'"], {"data.jsonl": jsonl(GOOD)}),
    Case("unknown-key-cli", ["--model.init_args.betta=0.1"], ["has no argument 'betta'; did you mean 'beta'?"]),
    Case("unknown-key-yaml", ["--config=extra.yaml"], ["has no argument 'betta'; did you mean 'beta'?"],
         {"extra.yaml": b"model:\n  init_args:\n    betta: 0.1\n"}),
    Case("misspelled-class-path", ["--model=lit_align.objectives.DPOO"], ["lit_align.objectives.DPOO", "DPOO"]),
    Case("negative-beta", ["--model.beta=-0.1"], ["beta must be positive, got -0.1"]),
    Case("zero-learning-rate", ["--model.learning_rate=0"], ["learning_rate must be positive, got 0.0"]),
    Case("zero-gamma", ["--model.gamma=0"], ["gamma must be positive, got 0.0"], config="pmle.yaml"),
    Case("missing-reward-model", ["--model.reward_model=missing/rm.ckpt"],
         ["reward model checkpoint 'missing/rm.ckpt' does not exist"], config="rlhf.yaml"),
    Case("model-not-loadable-offline", ["--model.policy.model=no-such-org/no-such-model"],
         ["could not load tokenizer 'no-such-org/no-such-model'", "hub id"]),
]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    """``nochat``: the tiny tokenizer without a chat template; ``nopad``: the tiny model with a tokenizer
    without a pad token."""
    from lit_align.models.loading import load_causal_lm, load_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    nochat = load_tokenizer("tiny")
    nochat.chat_template = None
    nochat.save_pretrained(root / "nochat")
    nopad = load_tokenizer("tiny")
    nopad.pad_token = None
    nopad.save_pretrained(root / "nopad")
    load_causal_lm("tiny").save_pretrained(root / "nopad")
    return root




@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, run_dir, tokenizer_dirs, capsys, monkeypatch):
    monkeypatch.delenv("LIT_ALIGN_DEBUG", raising=False)
    for name in ("nochat", "nopad"):
        os.symlink(tokenizer_dirs / name, run_dir / name)
    for name, content in case.files.items():
        (run_dir / name).write_bytes(content)
    args = fit_args(case.config, "--data.val_split=null", "--export.enabled=false", "--trainer.log_every_n_steps=1",
                    *case.args, steps=1)
    status = run_main(args)
    out, err = capsys.readouterr()
    if case.skipped:
        assert status == 0, err[-2000:]
        for text in case.expect:
            assert text in out, out
        losses = _logged(run_dir, "train/loss")
        assert losses and all(math.isfinite(v) for v in losses)  # nothing dropped or cut yields a NaN
        return
    assert status == 2, f"exit status {status}\n{err[-2000:]}"
    assert "Traceback" not in err
    if "lit-align: error:" in err:  # our one-line message (not jsonargparse's usage + error)
        lines = [line for line in err.splitlines() if line.startswith("lit-align: error:")]
        assert len(lines) == 1, err
        message = lines[0]
    else:
        message = err[err.index("error:"):]
    for text in case.expect:
        assert text in message, message


def test_tokenizer_without_pad_token_pads_with_eos(run_dir, tokenizer_dirs, capsys, caplog):
    """Documented fallback: a tokenizer without a pad token pads with EOS (masked out), and says so."""
    os.symlink(tokenizer_dirs / "nopad", run_dir / "nopad")
    args = fit_args("dpo.yaml", "--model.policy.model=nopad", "--model.policy.reference=copy",
                    "--data.val_split=null", "--export.enabled=false", "--trainer.log_every_n_steps=1", steps=1)
    assert run_main(args) == 0, capsys.readouterr().err[-2000:]
    assert "tokenizer 'nopad' has no pad token: padding with its EOS token '</s>'" in caplog.text
    assert all(math.isfinite(v) for v in _logged(run_dir, "train/loss"))


def test_console_script_exit_status_and_debug_traceback(run_dir):
    """The real ``lit-align`` process: exit status 2, one message, no traceback; LIT_ALIGN_DEBUG=1 shows it."""
    (run_dir / "data.jsonl").write_bytes(jsonl(GOOD) + b'{"prompt": ')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LIT_ALIGN_DEBUG", None)
    script = os.path.join(os.path.dirname(sys.executable), "lit-align")
    args = [script, *fit_args("dpo.yaml", "--data.path=data.jsonl", "--data.val_split=null", steps=1)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-2] == (
        "lit-align: error: data.jsonl, line 2: not valid JSON (Expecting value); is the file truncated?")

    with pytest.raises(Exception, match="line 2: not valid JSON"):
        os.environ["LIT_ALIGN_DEBUG"] = "1"
        try:
            main(fit_args("dpo.yaml", "--data.path=data.jsonl", "--data.val_split=null", steps=1))
        finally:
            del os.environ["LIT_ALIGN_DEBUG"]


def _logged(run_dir, name: str) -> list[float]:
    values = []
    for path in run_dir.glob("runs/test/logs/**/metrics.csv"):
        with open(path) as handle:
            values += [float(row[name]) for row in csv.DictReader(handle) if row.get(name)]
    return values
