"""A collective whose peer went away ends the rank with one line, not a traceback (the two-node run that kills a
node is tests/distributed/test_multinode.py; these are the messages themselves, in-process)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

import lit_align.cli.app
import lit_align.cli.entry
from support.cli import run_main
from lit_align.distributed.strategies import lost_rank_message

GLOO_CLOSED = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
               "[10.0.0.2]:41234. This is typically caused by a remote worker crashing. Check the logs of the remote "
               "worker before reporting an error.")
GLOO_TIMEOUT = ("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 30000ms for "
                "recv operation to complete")


def test_gloo_peer_errors_become_one_line_naming_the_peer():
    message = lost_rank_message(RuntimeError(GLOO_CLOSED))
    assert message == ("lost contact with another process of the run (this process: Connection closed by peer "
                       "[10.0.0.2]:41234): a node or process died or did not answer within the strategy's timeout; "
                       "restart every node with --ckpt_path last to resume")
    assert "Timed out waiting 30000ms for recv operation to complete" in lost_rank_message(RuntimeError(GLOO_TIMEOUT))


def test_nccl_and_store_errors_are_recognised_through_the_exception_chain():
    try:
        try:
            raise dist.DistBackendError("NCCL communicator was aborted on rank 3")
        except dist.DistBackendError as inner:
            raise RuntimeError("training step failed") from inner
    except RuntimeError as outer:
        assert "NCCL communicator was aborted on rank 3" in lost_rank_message(outer)


def test_other_runtime_errors_are_left_alone():
    assert lost_rank_message(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert lost_rank_message(ValueError("Connection closed by peer")) is None  # not a backend error type


def test_cli_exits_non_zero_with_one_line(monkeypatch, capsys):
    def lose_a_peer(args):
        raise RuntimeError(GLOO_CLOSED)

    monkeypatch.setattr(lit_align.cli.app, "build_cli", lose_a_peer)
    monkeypatch.delenv(lit_align.cli.entry.DEBUG_ENV, raising=False)  # set, it would show the traceback instead
    assert run_main(["fit"]) == lit_align.cli.app.EXIT_LOST_RANK != 0
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if line.startswith("lit-align: error: lost contact")] == lines[:1]
    assert "Traceback" not in "\n".join(lines)


def test_cli_lets_other_runtime_errors_through(monkeypatch):
    def fail(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(lit_align.cli.app, "build_cli", fail)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        run_main(["fit"])
