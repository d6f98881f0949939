"""``python -m lit_align.cli``: the ``lit-align`` command."""

from lit_align.cli import main

if __name__ == "__main__":
    main()
