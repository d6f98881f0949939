"""lit-align: aligning language models from pairwise preferences, on Lightning."""

from lit_align.policy import PolicyWithReference

__version__ = "0.1.0"
__all__ = ["PolicyWithReference", "__version__"]
