"""Small seeded models shared by several test modules."""

from collections.abc import Callable

import torch


def tiny_unet(seed: int = 0, init: Callable | None = None, **extra):
    """A diffusers ``UNet2DModel`` for (1, 8, 8) images, 8/16 channels, built under ``seed``
    (the global RNG is left as it was); ``init(unet)`` runs under the same seed, after
    construction; ``extra`` goes to the constructor (e.g. ``num_class_embeds``). In eval mode."""
    import diffusers

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = diffusers.UNet2DModel(
            sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4, **extra)
        if init is not None:
            init(unet)
    return unet.eval()
