"""The evaluation report: win rate against reference responses, reward, KL(pi || pi_0) and length.

``EvaluationReport`` is a callback for a ``predict`` run (``lit-align evaluate`` adds it): for every batch of
prompts it takes the responses ``predict_step`` sampled, computes the sequence-level KL to the reference on those
samples, sum over response tokens of ln pi(y_t | x, y_<t) - ln pi_0(y_t | x, y_<t), and asks the judge to
compare each response with the data's reference response. At the end it gathers every rank's rows and writes,
from rank 0, into ``output_dir``:

- ``samples.jsonl``: one line per response (prompt, response, reference, win, rewards, KL, length), tagged with
  the method and the evaluated model;
- ``report.csv``: one row per evaluated method and model;
- ``report.md``: the same rows as a markdown table, like the paper's Table 2.

Rows are kept apart by what was evaluated, not by name alone: each carries ``model``, a digest of the evaluated
policy's weights (``model_digest``), so pi_0 and the trained policy evaluated into one ``output_dir`` under the same
method name keep a row (and samples) each; evaluating the same weights under the same method again replaces theirs.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_align.generation.records import gather_rows, prediction_records, write_jsonl
from lit_align.runs.checkpoint_io import payload_digest, xxhash
from lit_align.evaluation.judges import Judge

COLUMNS = ("method", "prompts", "samples", "win_rate", "win_prob", "reward", "reference_reward", "kl", "kl_std",
           "length", "ended", "model")
HEADERS = {
    "method": "method", "prompts": "prompts", "samples": "samples", "win_rate": "win rate %",
    "win_prob": "P(win) %", "reward": "reward", "reference_reward": "reference reward", "kl": "KL(π‖π₀)",
    "kl_std": "KL std", "length": "mean length", "ended": "EOS %", "model": "model",
}


class EvaluationReport(L.Callback):
    """Judges the responses of a ``predict`` run and writes the report.

    Args:
        judge: Compares each response with the data's reference response; ``None`` reports KL and length only.
        reference_model: The pi_0 of the KL column (hub id or directory, e.g. the SFT model); by default the
            objective's own reference. Name it when evaluating an exported model, whose built-in reference would
            be a copy of the model itself.
        reference_dtype: Weight dtype of ``reference_model``.
        output_dir: Where the files go; defaults to ``<trainer.default_root_dir>/evaluation``.
        method: The row's name in the table; defaults to the objective's class name.
    """

    def __init__(
        self,
        judge: Judge | None = None,
        reference_model: str | None = None,
        reference_dtype: str | None = None,
        output_dir: str | None = None,
        method: str | None = None,
    ) -> None:
        self.judge = judge
        self.reference_model = reference_model
        self.reference_dtype = reference_dtype
        self.output_dir = output_dir
        self.method = method
        self.results: dict[str, Any] = {}
        self._rows: list[dict[str, Any]] = []
        self._reference: torch.nn.Module | None = None
        self._warned_greedy = False

    # -- hooks -------------------------------------------------------------------------------------------------

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []
        if self.judge is not None:
            self.judge.setup(pl_module.device)
            self.judge.read_prompts_with(pl_module.tokenizer)  # a reward model of another tokenizer re-renders them
        if self.reference_model is not None:
            from lit_align.models.loading import load_causal_lm

            self._reference = load_causal_lm(self.reference_model, dtype=self.reference_dtype)
            self._reference.requires_grad_(False)
            self._reference.to(pl_module.device).eval()
        elif not pl_module.policy.reference.live:
            rank_zero_warn("the objective holds no reference model and none was named: the KL column stays empty")

    @torch.no_grad()
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        rows = prediction_records(outputs, pl_module.tokenizer)
        kls = self._sequence_kl(pl_module, outputs["rollout"], outputs["sampling"].temperature)
        for row, kl in zip(rows, kls.tolist()):
            row["kl"] = kl
        if self.judge is not None:
            if any("reference" not in r for r in rows):
                raise ValueError(
                    "the evaluation data has no reference responses to judge against: use rows with a "
                    "`completion` (or `chosen`) column, e.g. the tldr-sft preset's test split"
                )
            verdicts = self.judge.compare_batch(
                judge_prompts(self.judge, rows, outputs), [r["response"] for r in rows], [r["reference"] for r in rows]
            )
            for row, verdict in zip(rows, verdicts):
                row.update(win=verdict.win, reward=verdict.reward, reference_reward=verdict.reference_reward)
        self._rows.extend(rows)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = gather_rows(self._rows, trainer)
        self._rows = []
        method = self.method or type(pl_module).__name__
        self.results = {**summarise(rows, method), "model": model_digest(pl_module)}
        if trainer.is_global_zero:
            out = Path(self.output_dir or Path(trainer.default_root_dir) / "evaluation")
            update_samples(out / "samples.jsonl", rows, method, self.results["model"])
            table = update_report(out, self.results)
            rank_zero_info(f"evaluation of {method} on {self.results['prompts']} prompts -> {out}\n{table}")
        self._reference = None
        trainer.strategy.barrier("evaluation_report")

    # -- KL on the policy's own samples ------------------------------------------------------------------------

    def _sequence_kl(self, pl_module, rollout, temperature: float) -> torch.Tensor:
        """(N,) sum over response tokens of ln pi_T - ln pi_0,T at the sampling temperature T: the samples come from
        pi_T, so this estimates KL(pi_T || pi_0,T) (at T = 1 the policy's own KL). NaN without a reference, and
        for greedy decoding, whose single response per prompt estimates no KL."""
        ids, mask = rollout.input_ids, rollout.attention_mask
        if temperature == 0:
            if not self._warned_greedy:
                rank_zero_warn("greedy decoding samples no distribution: the KL column stays empty")
                self._warned_greedy = True
            return torch.full((ids.shape[0],), math.nan)
        policy, completion = pl_module.policy, rollout.completion_mask
        if self._reference is None and not policy.reference.live:
            return torch.full((ids.shape[0],), math.nan)
        logps, _ = policy.completion_logps(ids, mask, completion, temperature)
        ref_logps, _ = policy.completion_logps(ids, mask, completion, temperature, reference=self._reference is None,
                                               model=self._reference)
        return (logps - ref_logps).sum(-1).float().cpu()  # (N,)


def judge_prompts(judge: Judge, rows: list[dict[str, Any]], prediction: dict[str, Any]) -> list:
    """The prompt of each row as the judge reads it: the policy's text, or the prompt's chat messages for a judge
    that ``reads_messages`` (where the data had them)."""
    messages = prediction["batch"].get("prompt_messages") if judge.reads_messages else None
    if messages is None:
        return [r["prompt"] for r in rows]
    return [messages[i] or r["prompt"] for r, i in zip(rows, prediction["rollout"].prompt_index.tolist())]


def summarise(rows: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """The table row of one method from its per-sample rows (percentages for win rate, P(win) and EOS)."""

    def mean(values: list[float]) -> float:
        values = [v for v in values if v is not None and not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan

    wins = [r["win"] for r in rows if r.get("win") is not None]
    kls = [r["kl"] for r in rows if not math.isnan(r.get("kl", math.nan))]
    kl_mean = mean(kls)
    return {
        "method": method,
        "prompts": len({r["index"] for r in rows}),
        "samples": len(rows),
        # a hard win counts 1, a tie (P = 0.5 exactly) 1/2
        "win_rate": 100 * mean([1.0 if w > 0.5 else 0.5 if w == 0.5 else 0.0 for w in wins]),
        "win_prob": 100 * mean(wins),
        "reward": mean([r.get("reward") for r in rows]),
        "reference_reward": mean([r.get("reference_reward") for r in rows]),
        "kl": kl_mean,
        "kl_std": math.sqrt(mean([(k - kl_mean) ** 2 for k in kls])) if kls else math.nan,
        "length": mean([float(r["length"]) for r in rows]),
        "ended": 100 * mean([float(r["ended"]) for r in rows]),
    }


def model_digest(pl_module) -> str:
    """A short digest of the evaluated policy's weights (adapters included), naming its rows in the report."""
    policy = getattr(pl_module, "policy", None)
    network = getattr(policy, "policy", policy)
    try:
        state = {k: v for k, v in network.state_dict().items() if not k.startswith("reference.")}
        return payload_digest(state, "xxh3_128" if xxhash is not None else "sha256")[:12]
    except Exception:  # weights it cannot read whole (sharded): named by class and model
        return f"{type(pl_module).__name__}:{getattr(policy, 'model_name', '?')}"


def _key(row: dict[str, Any]) -> tuple[str, str]:
    return str(row.get("method")), str(row.get("model") or "")


def update_samples(path: Path, rows: list[dict[str, Any]], method: str, model: str) -> None:
    """Write ``rows`` (tagged with ``method`` and ``model``) into ``path``, replacing only the samples of the same
    method and model: the samples of other evaluations into the same folder stay."""
    kept = []
    if path.is_file():
        with path.open(encoding="utf-8") as handle:
            kept = [r for r in (json.loads(line) for line in handle if line.strip()) if _key(r) != (method, model)]
    write_jsonl(path, kept + [{**row, "method": method, "model": model} for row in rows])


def update_report(directory: Path, result: dict[str, Any]) -> str:
    """Add (or replace) ``result``'s row in ``report.csv`` (one per method and model), rewrite ``report.md``,
    return the markdown table."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / "report.csv"
    rows: list[dict[str, Any]] = []
    if csv_path.is_file():
        with csv_path.open(newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.DictReader(handle) if _key(r) != _key(result)]
    rows.append({k: result.get(k, "") for k in COLUMNS})
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows)
    (directory / "report.md").write_text(table + "\n", encoding="utf-8")
    return table


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADERS[c] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c) or "") if c == "model" else _cell(row.get(c, ""))
                                       for c in COLUMNS) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "n/a"
    return str(int(number)) if number.is_integer() and abs(number) >= 1 and "." not in str(value) else f"{number:.2f}"
