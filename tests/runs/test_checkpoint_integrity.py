"""Checkpoint integrity: a checkpoint whose bytes changed after it was written, one that cannot be read, and one
that pickles an object are each refused by ``lit-align`` with one line naming the file, and never with advice to
unpickle it.

One 1-step DPO fit is shared by the module; each test damages a copy of its ``last.ckpt`` and resumes from it.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities import AttributeDict

from support.cli import fit_args, fit_in, run_main
from lit_align.runs.checkpoint_io import (
    CHECKSUM_KEY, AtomicCheckpointIO, CheckpointLoadError, load_checkpoint_file, payload_digest,
)
from lit_align.generation.rollout import SamplingConfig

LAST = "runs/test/checkpoints/last.ckpt"
QUIET = ["--data.val_split=null", "--export.enabled=false", "--trainer.limit_val_batches=0",
         "--data.init_args.limit_rows=8", "--data.init_args.batch_size=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return fit_in(tmp_path_factory.mktemp("trained"), *QUIET, steps=1)


@pytest.fixture
def checkpoint(run_dir, trained, monkeypatch):
    """A copy of the trained run's ``last.ckpt`` in this test's working directory."""
    monkeypatch.setenv("LIT_ALIGN_CACHE", str(run_dir / ".cache"))
    shutil.copytree(trained, run_dir / "runs/test/checkpoints")
    return run_dir / LAST


def _record_span(path: Path, suffix: str, largest: bool = False) -> tuple[int, int]:
    """(offset, size) of the bytes of a zip record of a torch.save file (records are stored uncompressed)."""
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if i.filename.endswith(suffix) or (largest and "/data/" in i.filename)]
    info = max(infos, key=lambda i: i.file_size)
    data = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _overwrite(path: Path, offset: int, new: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + len(new)] = new
    path.write_bytes(bytes(data))


def _resume(*extra: str) -> list[str]:
    return fit_args("dpo.yaml", *QUIET, *extra, steps=2)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("lit-align: error:")]
    return line


def test_finite_garbage_written_into_a_checkpoint_is_refused_by_its_checksum(checkpoint, capsys):
    offset, size = _record_span(checkpoint, "", largest=True)  # the largest tensor: a float32 weight matrix
    _overwrite(checkpoint, offset, struct.pack("<8f", *[0.5] * 8))
    damaged = torch.load(checkpoint, weights_only=True)  # torch reads it: the zip's CRCs are not checked
    assert all(torch.isfinite(v).all() for v in damaged["state_dict"].values())

    assert run_main(_resume("--ckpt_path=last")) == 2
    assert _error_line(capsys) == (
        f"lit-align: error: {LAST} is corrupt (checksum mismatch): its content changed after it was written "
        "(a damaged copy or disk, or something wrote into the file); resume from another checkpoint"
    )


def test_truncated_checkpoint_is_refused_in_one_line_naming_the_file(checkpoint, capsys):
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    (checkpoint.parent / "step1.ckpt").write_bytes(b"")  # another checkpoint there is offered as the way out
    assert run_main(_resume(f"--ckpt_path={LAST}")) == 2
    line = _error_line(capsys)
    assert line.startswith(f"lit-align: error: {LAST} is corrupt or not a checkpoint (unreadable: RuntimeError: ")
    assert line.endswith("; resume from another checkpoint (others there: step1.ckpt)")
    assert "weights_only" not in line


def test_corrupt_pickle_is_never_answered_with_advice_to_unpickle_it(checkpoint, capsys):
    offset, _ = _record_span(checkpoint, "data.pkl")
    _overwrite(checkpoint, offset + 2, b"\xff")  # after PROTO 2: an opcode that does not exist
    with pytest.raises(CheckpointLoadError) as raised:
        load_checkpoint_file(checkpoint)
    assert "weights_only" not in str(raised.value)
    assert run_main(_resume("--ckpt_path=last")) == 2
    line = _error_line(capsys)
    assert line.startswith(f"lit-align: error: {LAST} is corrupt or not a checkpoint (unreadable: UnpicklingError")
    assert "weights_only" not in line and "trust" not in line


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_checkpoint_with_a_pickled_object_is_refused_in_one_line(checkpoint, capsys):
    pwned = checkpoint.parent / "pwned"
    evil = load_checkpoint_file(checkpoint)
    evil["hyper_parameters"]["payload"] = _Payload(str(pwned))
    torch.save(evil, "evil.ckpt")
    assert run_main(_resume("--ckpt_path=evil.ckpt")) == 2
    line = _error_line(capsys)
    assert line.startswith("lit-align: error: evil.ckpt: refusing to unpickle this checkpoint: it pickles ")
    assert line.endswith("an arbitrary Python object that could run code when loaded. lit-align reads only tensors "
                         "and plain values: use a checkpoint that lit-align wrote")
    assert "weights_only" not in line
    assert not pwned.exists()


def test_checksum_round_trips_every_kind_of_value_and_changes_with_any_of_them(tmp_path):
    payload = {
        "state_dict": {"w": torch.randn(3, 4), "h": torch.ones(2, dtype=torch.bfloat16), "n": torch.tensor(7)},
        "hyper_parameters": {"beta": 0.1, "sampling": SamplingConfig(max_new_tokens=4), "tags": {"a", "b", "c"},
                             "none": None},
        "global_step": 5, "dtype": torch.float16, "shape": torch.Size([2, 3]), "empty": torch.zeros(0),
    }
    path = tmp_path / "ok.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(payload, path)
    stored = torch.load(path, weights_only=False)[CHECKSUM_KEY]
    assert stored["digest"] == payload_digest(payload, stored["algorithm"])
    loaded = io.load_checkpoint(path)  # no false alarm on any kind of value; the checksum is not handed on
    assert CHECKSUM_KEY not in loaded and loaded.keys() == payload.keys()

    base = payload_digest(payload)
    assert payload_digest({**payload, "global_step": 6}) != base
    assert payload_digest({**payload, "global_step": 5.0}) != base
    hparams = payload["hyper_parameters"]
    other_sampling = {**hparams, "sampling": SamplingConfig(max_new_tokens=8)}
    assert payload_digest({**payload, "hyper_parameters": other_sampling}) != base
    weights = payload["state_dict"]
    assert payload_digest({**payload, "state_dict": {**weights, "w": weights["w"] + 1e-7}}) != base
    assert payload_digest({**payload, "state_dict": {**weights, "n": torch.tensor(7, dtype=torch.int32)}}) != base
    # unpickling may rebuild a container as a sibling type; the checksum follows values, not container types
    assert payload_digest({**payload, "hyper_parameters": AttributeDict(hparams)}) == base
