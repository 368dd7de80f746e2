"""torch.distributed helpers (the rank protocol of pfd's reduction core, public here).

:func:`pfd.distance` shards noise indices across the ranks of an initialised process group
(contiguous shards, :func:`shard_range`) and merges every rank's exact partial sums, so a PFD
value never depends on the world size.

>>> world_info()  # not initialised: one process
(0, 1)
>>> shard_range(10, 1, 2)
(5, 10)
"""

from __future__ import annotations

from pfd._reduce import is_distributed, is_rank_zero, shard_range, world_info

__all__ = ["is_distributed", "is_rank_zero", "shard_range", "world_info"]
