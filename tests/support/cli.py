"""Runs of the lit-align command in tests."""

from __future__ import annotations

import os


def fit_args(config: str, *extra: str, steps: int = 4) -> list[str]:
    """CLI arguments for a short CPU fit of a shipped config (used with ``lit_align.cli.app.build_cli``)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [
        "fit", "--config", os.path.join(root, "configs", config),
        f"--trainer.max_steps={steps}", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.val_check_interval=null",
        "--trainer.limit_val_batches=2", "--trainer.default_root_dir=runs/test", *extra,
    ]


def run_main(args: list[str]) -> int:
    """Run the ``lit-align`` console entry point in-process; its exit status (0 when it returns)."""
    from lit_align.cli.app import main

    try:
        main(args)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def fit_in(root, *extra: str, steps: int = 4):
    """A short DPO fit (``fit_args``) run in the folder ``root`` with its own reference cache; its checkpoint
    folder (for module-scoped fixtures that train once and hand copies of the checkpoints to each test)."""
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("LIT_ALIGN_CACHE", str(root / ".cache"))
        assert run_main(fit_args("dpo.yaml", *extra, steps=steps)) == 0
    return root / "runs/test/checkpoints"

