"""torch.distributed helpers shared by the monitor, the metric and the Lightning callback.

:func:`pfd.distance` shards noise indices across the ranks of an initialised process group
(contiguous shards, :func:`shard_range`) and merges every rank's exact partial sums, so a PFD
value never depends on the world size.

>>> world_info()  # not initialised: one process
(0, 1)
>>> shard_range(10, 1, 2)
(5, 10)
"""

from __future__ import annotations

from typing import Any

from pfd.distance import shard_range

__all__ = ["is_distributed", "is_rank_zero", "shard_range", "world_info"]


def is_distributed(group: Any = None) -> bool:
    """True when torch.distributed is initialised with more than one process in ``group``."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def world_info(group: Any = None) -> tuple[int, int]:
    """(rank, world_size) in ``group``; (0, 1) when torch.distributed is not initialised."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def is_rank_zero() -> bool:
    """True on global rank 0 (and in a single process): the rank that writes files."""
    return world_info()[0] == 0
