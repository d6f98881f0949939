"""The documentation is the spec: every ``lit-align`` command in a shell block of README.md and docs/*.md runs as
shown, in document order, in one temporary folder, as a user who follows the docs would run it.

Commands are read from the markdown itself (``bash``/``sh`` blocks, ``\\`` continuations joined, ``$ `` transcripts
in plain blocks, the ``lit-align`` parts of ``&&`` chains), so a new command is run by default; only the ones in
``SKIPPED`` (each with its reason: what CI cannot have) are left out, and a skip that no longer matches a
documented command fails the test. Each runs as a subprocess of the installed ``lit-align`` console script, from
the folder that holds a copy of ``configs/`` and the files the docs ask the user to write (the ``# name.py``
blocks, a small ``my_pairs.jsonl``). A training command gets ``--config limits.yaml`` appended (a step limit, one
validation batch); the command's own text is never edited. It must exit 0 (or as its transcript shows) and leave
the outputs the doc names (``-> path`` comments, ``> file``, ``--output_dir``, ``--out``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.extended  # about 5 minutes on 2 cores: CI's extended step

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]

#: Documented commands not run here, by their text as documented (continuations joined, comment dropped,
#: spaces collapsed), with the reason. Only what CI cannot have: hub downloads, GPUs, several nodes, an API.
SKIPPED = {
    "lit-align fit --config configs/dpo.yaml --config configs/strategy/fsdp2.yaml":
        "FSDP2 over every GPU of the machine, bf16 (the two-CPU-process variant in docs/scaling.md runs)",
    "srun lit-align fit --config configs/dpo.yaml --config configs/strategy/multinode.yaml":
        "SLURM, several GPU nodes",
    "torchrun --nnodes=2 --nproc-per-node=8 --node-rank=$NODE_RANK --master-addr=$MASTER_ADDR --master-port=29500 "
    "-m lit_align.cli fit --config configs/dpo.yaml --config configs/strategy/multinode.yaml":
        "two nodes of 8 GPUs",
    "torchrun --nnodes=2 --nproc-per-node=8 --node-rank=$NODE_RANK --master-addr=$MASTER_ADDR --master-port=29500 "
    "-m lit_align.cli fit --config configs/dpo.yaml --config configs/strategy/multinode.yaml "
    "--trainer.default_root_dir=/shared/runs/dpo":
        "two nodes of 8 GPUs, a shared file system",
    "srun lit-align fit --config configs/dpo.yaml --config configs/strategy/multinode.yaml "
    "--trainer.default_root_dir=/shared/runs/dpo --ckpt_path=last":
        "SLURM, several GPU nodes, a shared file system",
    "lit-align evaluate --config configs/tldr/pdistill.yaml --ckpt_path runs/tldr/pdistill/checkpoints/last.ckpt "
    "--judge RewardModelJudge --judge.reward_model runs/tldr/reward/hf_model --data.init_args.val_split test":
        "TL;DR: a hub model (pythia) and hub datasets",
    "lit-align evaluate --config configs/ultrafeedback/pdistill.yaml --ckpt_path ... --judge LLMJudge "
    "--judge.base_url https://api.openai.com/v1 --judge.model gpt-4o":
        "an OpenAI API key and network; UltraFeedback from the hub",
    "lit-align fit --config configs/tldr/sft.yaml": "TL;DR: a hub model (pythia) and a hub dataset",
    "lit-align fit --config configs/tldr/reward.yaml": "TL;DR: a hub model (pythia) and a hub dataset",
    "lit-align fit --config configs/tldr/pdistill.yaml": "TL;DR: a hub model (pythia) and a hub dataset",
    "lit-align evaluate --config configs/tldr/$m.yaml --ckpt_path runs/tldr/$m/checkpoints/last.ckpt "
    "--judge RewardModelJudge --judge.reward_model runs/tldr/reward/hf_model --data lit_align.data.PromptDataModule "
    "--data.init_args.path tldr-sft --data.init_args.val_split test --data.init_args.limit_rows 1 "
    "--output_dir runs/tldr/evaluation":
        "TL;DR: a hub model (pythia) and hub datasets",
}

#: Appended to every command that trains, predicts or evaluates: a short run of what the command does.
#: (Every step logged, so that two steps leave the curves that ``plot`` draws.)
LIMITS = {"trainer": {"max_steps": 2, "log_every_n_steps": 1, "limit_val_batches": 1, "limit_test_batches": 1,
                      "limit_predict_batches": 1}}
#: Subcommands that get the limits (not --help, --print_config or plot, whose output the limits would change).
LIMITED = {"fit", "validate", "test", "predict", "evaluate"}
#: Lines of a transcript (a ``$ lit-align ...`` block) that the run must print as shown: lit-align's own messages.
OWN_LINES = re.compile(r"^(data: |seeds: |run: |exported |lit-align: error: |reward (stage|model): )")


@dataclass
class Command:
    """One documented command: its text as documented, where, and what the doc says it prints or writes."""

    text: str
    where: str
    comment: str = ""
    transcript: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return " ".join(self.text.split())


def _blocks(path: Path):
    """(language, first line number, body) of each fenced block of a markdown file."""
    text = path.read_text()
    for match in re.finditer(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```", text, re.S | re.M):
        yield match.group(1), text[:match.start()].count("\n") + 1, match.group(2)


def _is_command(line: str) -> bool:
    launched = line.startswith("torchrun ") and "lit_align.cli" in line
    return line.startswith(("lit-align ", "srun lit-align ")) or launched


def _joined_lines(body: str):
    """(offset of the first line, line) with ``\\`` continuations joined."""
    pending, start = "", 0
    for offset, line in enumerate(body.splitlines()):
        if not pending:
            start = offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def documented_commands(document: str) -> list[Command]:
    """Every command of ``document``'s shell blocks and ``$ `` transcripts, in order."""
    commands: list[Command] = []
    for language, line_number, body in _blocks(ROOT / document):
        if language in ("bash", "sh", "shell", "console"):
            for offset, line in _joined_lines(body):
                code, _, comment = line.strip().partition(" #")
                for part in code.split(" && "):  # an install chain ending in a command: its lit-align part
                    part = part.strip()
                    if _is_command(part):
                        commands.append(Command(part, f"{document}:{line_number + 1 + offset}", comment.strip()))
        elif language == "":
            lines = body.splitlines()
            for offset, line in enumerate(lines):
                if line.startswith("$ lit-align "):
                    shown = lines[offset + 1:]
                    end = next((i for i, rest in enumerate(shown) if rest.startswith("$ ")), len(shown))
                    commands.append(Command(line[2:].strip(), f"{document}:{line_number + 1 + offset}",
                                            transcript=shown[:end]))
    return commands


def user_files(document: str) -> dict[str, str]:
    """The files a document asks the user to write: python blocks whose first line is ``# <name>.py``."""
    files = {}
    for language, _, body in _blocks(ROOT / document):
        first = body.splitlines()[0] if body.strip() else ""
        match = re.fullmatch(r"# (\w+\.py)", first.strip())
        if language == "python" and match:
            files[match.group(1)] = body
    return files


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The user's folder: a checkout's configs, the files the docs ask for, a small pairs file of their own."""
    folder = tmp_path_factory.mktemp("user")
    shutil.copytree(ROOT / "configs", folder / "configs")
    for document in DOCUMENTS:
        for name, body in user_files(document).items():
            (folder / name).write_text(body)
    rows = (ROOT / "lit_align" / "assets" / "data" / "tiny_preferences_train.jsonl").read_text().splitlines()
    (folder / "my_pairs.jsonl").write_text("\n".join(rows[:48]) + "\n")
    (folder / "limits.yaml").write_text(json.dumps(LIMITS))  # JSON is YAML
    return folder


def _environment(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIT_ALIGN_", "MLFLOW_", "WANDB_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               LIT_ALIGN_CACHE=str(folder / ".cache" / "lit_align"))
    env.pop("PYTHONPATH", None)  # user code is found the way the docs say, not through the test's path
    return env


def _argv(command: Command) -> tuple[list[str], str | None]:
    """The command's words plus the limits where it runs something, and the file its stdout is redirected to."""
    words = shlex.split(command.text)
    redirect = None
    if ">" in words:
        at = words.index(">")
        words, redirect = words[:at], words[at + 1]
    subcommand = words[1] if len(words) > 1 else ""
    # a command whose transcript shows it refused runs exactly as shown (the refusal may be the missing limit)
    refused = any(line.startswith("lit-align: error:") for line in command.transcript)
    if subcommand in LIMITED and not refused and not {"--help", "--print_config"} & set(words) and not any(
            w.endswith(".help") for w in words):
        words = [*words, "--config", "limits.yaml"]
    return words, redirect


def expected_outputs(command: Command, redirect: str | None) -> list[str]:
    """Paths the doc says the command writes: ``-> path`` comments, ``> file``, ``--output_dir``, ``--out``."""
    words = shlex.split(command.text)
    paths = re.findall(r"->\s*(\S+)", command.comment)
    paths += [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--output_dir", "--out")]
    if redirect:
        paths.append(redirect)
    runs = [w for w in words[2:] if not w.startswith("-")]
    if words[:2] == ["lit-align", "plot"] and "--out" not in words:  # lit_align.runs.plot: <run>/plots, plots/ for several
        paths.append(f"{runs[0]}/plots/loss.png" if len(runs) == 1 else "plots/loss.png")
    return paths


def run_command(command: Command, folder: Path) -> str | None:
    """Run one documented command; None when it behaves as documented, else what went wrong."""
    words, redirect = _argv(command)
    expect_failure = any(line.startswith("lit-align: error:") for line in command.transcript)
    start = time.monotonic()
    proc = subprocess.run(words, cwd=folder, env=_environment(folder), capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    print(f"{seconds:6.1f}s rc={proc.returncode} {command.where}: {command.text}")
    output = proc.stdout + proc.stderr
    if redirect:
        (folder / redirect).write_text(proc.stdout)
    if (proc.returncode != 0) != expect_failure:
        tail = "\n    ".join(output.strip().splitlines()[-6:])
        return f"{command.where}: `{command.text}` exited {proc.returncode}:\n    {tail}"
    missing = [line for line in command.transcript if OWN_LINES.match(line) and line not in output]
    named = expected_outputs(command, redirect) + re.findall(r"^exported the trained model .* to (\S+)$", output, re.M)
    missing += [f"(no file {p})" for p in named if not _written(folder / p)]
    if missing:
        return f"{command.where}: `{command.text}` did not show or write:\n    " + "\n    ".join(missing)
    return None


def _written(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0 or path.is_dir() and any(path.iterdir())


def test_every_skip_names_a_documented_command():
    documented = {c.key for document in DOCUMENTS for c in documented_commands(document)}
    assert set(SKIPPED) <= documented, f"skips that match no documented command: {set(SKIPPED) - documented}"


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if documented_commands(d)])
def test_documented_commands_run_as_shown(document, folder):
    failures, start = [], time.monotonic()
    for command in documented_commands(document):
        if command.key in SKIPPED:
            print(f"  skipped {command.where}: {command.text} ({SKIPPED[command.key]})")
            continue
        failure = run_command(command, folder)
        if failure:
            print(f"  FAILED {failure}")
            failures.append(failure)
    print(f"{document}: {time.monotonic() - start:.0f}s")
    assert not failures, f"{len(failures)} documented command(s) of {document} fail:\n" + "\n".join(failures)
