"""lit-align: aligning language models from pairwise preferences, on Lightning.

The packages, from the bottom up (each imports only from the ones before it): ``losses`` (pure tensor maths),
``models`` (loading, the forward, log-probs, the chunked head, packing), ``distributed`` (sharding, strategies),
``runs`` (checkpoints, manifest, atomic writes, lock, secrets, loggers), ``data``, ``generation`` (sampling,
rollouts, engines), ``environments``, ``policy`` (the trained model and its reference), ``rewards``,
``evaluation``, ``objectives`` (``offline``, ``onpolicy``), ``callbacks`` and ``cli``.
"""

from lit_align import _moved
from lit_align._lazy import lazy_exports

__version__ = "0.1.0"
__all__ = ["PolicyWithReference", "__version__"]

_moved.install()
__getattr__, __dir__ = lazy_exports(__name__, {"PolicyWithReference": "lit_align.policy.with_reference"})
