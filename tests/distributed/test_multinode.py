"""Two nodes simulated on one machine: each node is its own process tree (a ``torchrun`` agent and its worker, or
one task with the environment SLURM gives it), the ranks meet over TCP on 127.0.0.1 and train under FSDP2 on CPU
(gloo) with ``trainer.num_nodes=2`` and ``trainer.devices=1``, as ``configs/strategy/multinode.yaml`` does with
2 x 8 GPUs.

Equal to one process: each node's rank takes 4 rows of every global batch of 8 (``DistributedSampler`` deals the
seeded permutation out by global rank, whichever node it is on), gradients are averaged over ranks and the logged
loss is example-weighted across them, so the loss curve must be one process's with ``batch_size: 8`` up to
float32 round-off. What would differ: a node that read its rank from the wrong variable (both would train on the
same rows), a world size of 1 per node (no gradient averaging), a reward model fitted on other batches.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from lit_align.cli.app import build_cli
from support.launch import CONFIGS, finish_nodes, free_port, kill_tree, metrics_by_run, start_node

pytestmark = [pytest.mark.slow, pytest.mark.extended]

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
# float32 sums in another order differ by ~1e-6; a wrong rank or a missing average moves the loss far more
TOLERANCE = 2e-4
DPO_STEPS = 6
TIMEOUT_S = 30  # the process group's timeout for these runs (the shipped default is 30 minutes)
TWO_NODES = [
    "--config", os.path.join(CONFIGS, "strategy", "fsdp2.yaml"), "--trainer.num_nodes=2", "--trainer.devices=1",
    "--trainer.strategy.init_args.mixed_precision=null",  # float32, comparable with one process
    f"--trainer.strategy.init_args.timeout=0:00:{TIMEOUT_S}",
]
# The shipped 2 x 8 GPU overlay as written (num_nodes 2, activation checkpointing), brought down to one CPU
# process per node.
MULTINODE_OVERLAY = [
    "--config", os.path.join(CONFIGS, "strategy", "multinode.yaml"), "--trainer.accelerator=cpu",
    "--trainer.devices=1", "--trainer.strategy.init_args.process_group_backend=gloo",
    "--trainer.strategy.init_args.mixed_precision=null", f"--trainer.strategy.init_args.timeout=0:00:{TIMEOUT_S}",
]


# The shipped monitors sample at step 0 on every rank; one test keeps them (they must line up across nodes), the
# others drop them for time: they do not change an offline loss.
NO_MONITORS = ["--trainer.callbacks=[]"]


def _args(config: str, root: str, *extra: str) -> list[str]:
    return [
        "fit", "--config", os.path.join(CONFIGS, config), "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={root}", "--export.enabled=false",
        # a constant rate, so a run stopped and resumed follows the same schedule as an uninterrupted one
        "--model.init_args.lr_schedule=constant", "--model.init_args.warmup_ratio=0", *extra,
    ]


def _dpo(root: str, *extra: str) -> list[str]:
    return _args("dpo.yaml", root, f"--trainer.max_steps={DPO_STEPS}", "--checkpoint.every_n_train_steps=2", *extra)


# pairs=dataset: the data's own two completions, scored by the reward model. Sampled pairs would differ between
# one process and two (each rank draws from its own generator), and top-1 sampling makes both responses equal (a
# zero loss). The reward stage's batch is pinned: by default it is the data module's batch, which is per rank.
PDISTILL = [*NO_MONITORS, "--trainer.max_steps=8", "--data.init_args.limit_rows=32", "--model.init_args.pairs=dataset",
            "--model.init_args.reward_stage.epochs=1", "--model.init_args.reward_stage.batch_size=8"]


def _torchrun(node_rank: int, port: int, args: list[str]):
    return start_node([TORCHRUN, "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node_rank}",
                       "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "lit_align.cli", *args])


def _torchrun_nodes(args: list[str]) -> list:
    port = free_port()
    return [_torchrun(rank, port, args) for rank in (0, 1)]


def _slurm_task(node_id: int, port: int, args: list[str]):
    """One task of ``srun --nodes=2 --ntasks-per-node=1``: the variables SLURM sets that Lightning reads."""
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "lit-align-dpo",  # a job name other than bash/interactive
             "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_NODELIST": "localhost",
             "SLURM_PROCID": str(node_id), "SLURM_LOCALID": "0", "SLURM_NODEID": str(node_id),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return start_node([sys.executable, "-m", "lit_align.cli", *args], **slurm)


def _assert_finished(nodes: list, timeout: float = 300) -> list[str]:
    outputs = finish_nodes(nodes, timeout)
    for rank, (node, output) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank}:\n{output[-6000:]}"
    return outputs


def _losses(root: str) -> dict[int, float]:
    return {step: value for run in metrics_by_run(root, "train/loss") for step, value in run.items()}


def _assert_curves_match(single: dict[int, float], nodes: dict[int, float]) -> None:
    assert sorted(nodes) == sorted(single), (single, nodes)
    for step in single:
        assert nodes[step] == pytest.approx(single[step], abs=TOLERANCE), (step, single, nodes)
    assert max(single.values()) - min(single.values()) > 10 * TOLERANCE  # the curve moves: matching means something


@pytest.fixture(scope="module")
def one_process_dpo(tmp_path_factory) -> dict[int, float]:
    """The one-process DPO curve on global batches of 8, which every two-node DPO run must reproduce."""
    folder = tmp_path_factory.mktemp("one_process")
    with pytest.MonkeyPatch.context() as patch:  # as run_dir does: nothing of this run lands in the checkout
        patch.chdir(folder)
        patch.setenv("LIT_ALIGN_CACHE", str(folder / ".cache" / "lit_align"))
        build_cli(_dpo(str(folder / "dpo"), "--data.init_args.batch_size=8"))
    return _losses(str(folder / "dpo"))


def test_dpo_on_two_torchrun_nodes_matches_one_process(run_dir, one_process_dpo):
    """Two torchrun agents (static rendezvous on node 0's address), the shipped monitors on."""
    root = str(run_dir / "nodes")
    outputs = _assert_finished(_torchrun_nodes(_dpo(root, "--data.init_args.batch_size=4", *TWO_NODES)))
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]  # node 1 holds global rank 1 of a world of 2
    _assert_curves_match(one_process_dpo, _losses(root))


def test_dpo_under_slurm_variables_matches_one_process(run_dir, one_process_dpo):
    """Lightning's SLURMEnvironment picks the ranks from SLURM_PROCID/SLURM_NODEID and checks num_nodes and
    devices against SLURM_NNODES and SLURM_NTASKS_PER_NODE; no torchrun anywhere. configs/strategy/multinode.yaml
    is the overlay."""
    root = str(run_dir / "nodes")
    port = free_port()
    args = _dpo(root, "--data.init_args.batch_size=4", *MULTINODE_OVERLAY, *NO_MONITORS)
    outputs = _assert_finished([_slurm_task(node_id, port, args) for node_id in (0, 1)])
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
    _assert_curves_match(one_process_dpo, _losses(root))


def test_preference_distillation_on_two_torchrun_nodes_matches_one_process(run_dir):
    """The reward stage fits on both nodes, node 0 saves the reward model and node 1 loads it from the shared run
    folder; then distillation with its four passes over every batch, scored under the sharded reference."""
    build_cli(_args("pdistill.yaml", str(run_dir / "single"), "--data.init_args.batch_size=8", *PDISTILL))
    root = str(run_dir / "nodes")
    _assert_finished(_torchrun_nodes(_args("pdistill.yaml", root, "--data.init_args.batch_size=4", *PDISTILL,
                                           *TWO_NODES)))
    _assert_curves_match(_losses(str(run_dir / "single")), _losses(root))


def test_killed_node_ends_the_run_with_one_line_and_two_nodes_resume(run_dir, one_process_dpo):
    """Node 1 (its torchrun agent and its worker) is killed in the middle of step 3; node 0 must stop with one line
    naming the lost peer, non-zero, within the process group's timeout, not hang. The next launch on two nodes
    resumes from last.ckpt (step 2) and the whole curve is still the one-process curve."""
    root = str(run_dir / "nodes")
    args = _dpo(root, "--data.init_args.batch_size=4", *TWO_NODES, *NO_MONITORS,
                "--trainer.callbacks+=support.crash.PauseMidStep",
                "--trainer.callbacks.step=3", "--trainer.callbacks.seconds=5")
    port = free_port()
    markers = [run_dir / f"paused-node{rank}" for rank in (0, 1)]
    nodes = [_torchrun(rank, port, [*args, f"--trainer.callbacks.marker={markers[rank]}"]) for rank in (0, 1)]
    deadline = time.monotonic() + 240
    while not markers[1].exists():
        if any(node.poll() is not None for node in nodes) or time.monotonic() > deadline:
            for node in nodes:
                kill_tree(node.pid)
            pytest.fail("\n".join(out[-3000:] for out in finish_nodes(nodes, 30)))
        time.sleep(0.1)
    kill_tree(nodes[1].pid)
    killed = time.monotonic()
    output = finish_nodes([nodes[0]], timeout=TIMEOUT_S + 60)[0]  # fails the test if node 0 hangs
    elapsed = time.monotonic() - killed
    nodes[1].wait()

    assert nodes[0].returncode != 0, output[-4000:]
    assert elapsed < 5 + TIMEOUT_S, elapsed  # the pause, then at most the timeout (a dropped connection: at once)
    errors = [line for line in output.splitlines() if "lit-align: error:" in line]
    assert len(errors) == 1, output[-6000:]
    assert "lost contact with another process of the run (rank 0 of 2" in errors[0], errors[0]
    assert "--ckpt_path last" in errors[0]
    assert "Traceback" not in output.split("lit-align: error:")[0], output[-6000:]  # no worker traceback first
    assert os.path.isdir(os.path.join(root, "checkpoints", "last.ckpt"))

    _assert_finished(_torchrun_nodes([*_dpo(root, "--data.init_args.batch_size=4", *TWO_NODES, *NO_MONITORS),
                                      "--ckpt_path=last"]))
    first, resumed = metrics_by_run(root, "train/loss")
    assert sorted(first) == [0, 1, 2] and sorted(resumed) == [2, 3, 4, 5], (first, resumed)  # resumed at step 2
    assert resumed[2] == pytest.approx(first[2], abs=TOLERANCE)
    _assert_curves_match(one_process_dpo, {**first, **resumed})
