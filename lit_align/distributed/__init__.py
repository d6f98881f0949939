"""Distribution: how a model is sharded (``sharding``) and the Lightning strategies that do it (``strategies``)."""
