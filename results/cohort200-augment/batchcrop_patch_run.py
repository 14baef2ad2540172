import os, sys, torch
import torch.nn.functional as F
from mmssl.data.neuro import datamodule as dm
def batch_crop(volumes, generator=None, *, pad=8, flip=False, flip_axes=(0, 1, 2)):
    if not pad:
        return dict(volumes)
    o = torch.randint(0, 2 * pad + 1, (3,), generator=generator).tolist()
    out = {}
    for name, x in volumes.items():
        s = x.shape[2:]
        p = F.pad(x, (pad,) * 6)
        out[name] = p[:, :, o[0]:o[0] + s[0], o[1]:o[1] + s[1], o[2]:o[2] + s[2]].contiguous(memory_format=torch.channels_last_3d) if x.is_contiguous(memory_format=torch.channels_last_3d) else p[:, :, o[0]:o[0] + s[0], o[1]:o[1] + s[1], o[2]:o[2] + s[2]].contiguous()
    return out
dm.independent_crop_flip = batch_crop
if os.environ.get("SHARED_ENCODER"):
    from mmssl.methods.base import MultimodalMethod
    orig = MultimodalMethod.build_encoder
    def build(self, modality, latent_dim=None):
        cache = self.__dict__.setdefault("_shared_cache", {})
        if latent_dim not in cache:
            cache[latent_dim] = orig(self, modality, latent_dim)
        return cache[latent_dim]
    MultimodalMethod.build_encoder = build
from mmssl.cli import main
sys.exit(main(sys.argv[1:]))
