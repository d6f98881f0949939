"""``lit-align plot RUN_DIR [RUN_DIR ...]``: the curves of one or more runs as PNG files, no code needed.

Reads every ``metrics.csv`` the CSV logger wrote under each run folder (``<run>/logs/version_*/``, a resumed run's
versions joined in step order) and draws one figure per group of metrics: the loss, the reward margins and
accuracy, KL to pi_0, entropy, diversity, and throughput, one panel per metric. Several runs are overlaid in each
panel, one colour, line style and marker each, labelled by folder name. A group none of the runs logged is
skipped. Figures go to ``--out`` (default: ``<run>/plots`` for one run, ``plots/`` for several).
``lit_align.callbacks.PlotCurves`` draws them at the end of ``fit`` instead.

Versions are joined by run identity, never by folder alone: each version folder names the run that wrote it
(``lit_align_run.json``, ``lit_align.runs.folder``), and only the versions of the folder's latest run are drawn (a
run and its resumes); versions of another run in the same folder are left out with a line naming them. Versions
written before run identities were recorded are joined as before when the folder holds nothing else.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from collections import defaultdict
from pathlib import Path

from lit_align.errors import UserError
from lit_align.runs.folder import LOG_RECORD_NAME, read_record

#: Figure name -> (title, regexes of the metric names drawn in it).
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "loss": ("Loss", (r"^(train|val)/loss$", r"^loss/(policy|value|preference)$")),
    "rewards": ("Rewards", (r"^(train|val)/rewards/(margins|chosen|rejected)$", r"^(train|val)/objective/scores$",
                            r"^(train|val)/objective/rlhf_reward$")),
    "accuracy": ("Pair accuracy", (r"^(train|val)/rewards/accuracies$",)),
    "kl": ("KL to the reference", (r"^monitor/kl_(k1|k3|token)$", r"^(train|val)/objective/kl$",
                                   r"^oracle/(forward|reverse)_kl$")),
    "entropy": ("Entropy", (r"^monitor/(entropy|sequence_entropy|entropy_data)$", r"^collapse/entropy$",
                            r"^(train|val)/objective/entropy$")),
    "diversity": ("Diversity of samples", (r"^collapse/(distinct_1|distinct_2|unique_fraction)$",)),
    "length": ("Response length", (r"^collapse/(mean_length|length_drift)$", r"completions/mean_length$")),
    "throughput": ("Throughput", (r"^perf/(tokens_per_sec|samples_per_sec)$",)),
    "learning_rate": ("Learning rate and gradient norm", (r"^train/(lr|learning_rate)$", r"^train/grad_norm$")),
}
_MARKERS = "os^Dvx+*"
_STYLES = ("-", "--", "-.", ":")

Series = dict[str, list[tuple[int, float]]]  # metric name -> [(step, value)]


def read_run(run_dir: str | Path) -> Series:
    """Every logged metric of a run folder as sorted (step, value) points; later versions win on a shared step."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("logs/version_*/metrics.csv"), key=_version_number) or sorted(
        run_dir.glob("**/metrics.csv"))
    if not files:
        raise UserError(f"{run_dir}: no metrics.csv found (a run folder holds logs/version_N/metrics.csv written by "
                        "the CSV logger)")
    files = latest_run(run_dir, files)
    points: dict[str, dict[int, float]] = defaultdict(dict)
    for path in files:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                step = row.get("step")
                if step in (None, ""):
                    continue
                for name, value in row.items():
                    if name in ("step", "epoch") or value in (None, ""):
                        continue
                    number = float(value)
                    if math.isfinite(number):
                        points[name][int(float(step))] = number
    return {name: sorted(values.items()) for name, values in points.items()}


def latest_run(run_dir: Path, files: list[Path]) -> list[Path]:
    """The metrics files of the newest run that named itself (by the run identity in each version folder).

    A version without a run identity (a ``validate`` or ``test`` into the folder, or logs older than identities)
    is drawn only when no version has one: it names no run to be joined to."""
    ids = [(read_record(path.parent / LOG_RECORD_NAME) or {}).get("run_id") for path in files]
    latest = next((run for run in reversed(ids) if run is not None), None)
    if latest is None:
        return files  # nothing tells the versions apart
    kept = [path for path, run in zip(files, ids) if run == latest]
    left = [path.parent.name for path, run in zip(files, ids) if run != latest]
    if left:
        print(f"{run_dir}: plotting the latest run ({', '.join(p.parent.name for p in kept)}); left out "
              f"{', '.join(left)}, written by another run or by validate/test into the same folder")
    return kept


def _version_number(path: Path) -> int:
    found = re.search(r"version_(\d+)", str(path))
    return int(found.group(1)) if found else 0


def plot_runs(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """Draw every group that at least one run logged; returns the PNG paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise UserError("lit-align plot needs matplotlib: pip install 'lit-align[plot]'") from err
    runs = {Path(d).name or str(d): read_run(d) for d in run_dirs}
    out = Path(out_dir) if out_dir is not None else (Path(run_dirs[0]) / "plots" if len(run_dirs) == 1
                                                     else Path("plots"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for figure_name, (title, patterns) in GROUPS.items():
        names = sorted({name for series in runs.values() for name in series
                        if any(re.search(p, name) for p in patterns)})
        if not names:
            continue
        # one panel per metric, the runs overlaid in each: metrics of a group differ in scale (a sequence entropy
        # of ~100 nats next to a token entropy of ~6), so a shared axis would flatten the small ones
        columns = min(3, len(names))
        rows = math.ceil(len(names) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            for r, (run, series) in enumerate(runs.items()):
                points = series.get(name)
                if not points:
                    continue
                steps, values = zip(*points)
                ax.plot(steps, values, label=run, color=f"C{r % 10}", linestyle=_STYLES[r % len(_STYLES)],
                        marker=_MARKERS[r % len(_MARKERS)], markersize=3, markevery=max(1, len(steps) // 12))
            if figure_name == "throughput":
                ax.set_yscale("log")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names):]:
            ax.set_visible(False)
        if len(runs) > 1:
            handles, labels = axes.flat[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="lower center", ncol=min(4, len(runs)), fontsize=8, frameon=False)
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0.06 if len(runs) > 1 else 0, 1, 1))
        path = out / f"{figure_name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-align plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (trainer.default_root_dir of each run)")
    parser.add_argument("--out", default=None, help="where the PNGs go (default: <run>/plots, or plots/ for several)")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not Path(run).is_dir():
            raise UserError(f"run folder {run} does not exist")
    written = plot_runs(args.runs, args.out)
    if not written:
        raise UserError(f"nothing to plot: none of {args.runs} logged a known metric")
    print(f"wrote {len(written)} figures to {written[0].parent}: " + ", ".join(p.name for p in written))
