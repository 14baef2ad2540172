import sys, numpy as np, torch
from mmssl.data.neuro import datamodule as dm
orig = dm.CohortDataset.__getitems__
MEANS = {}
def getitems(self, indices):
    batch = orig(self, indices)
    if not MEANS:
        for m, vol in self.volumes.items():
            MEANS[m] = torch.from_numpy(np.asarray(vol, dtype=np.float32).mean(axis=0))
    for m in MEANS:
        if m in batch:
            batch[m] = (batch[m] - MEANS[m][None, None]) * 5.0
    return batch
dm.CohortDataset.__getitems__ = getitems
from mmssl.cli import main
sys.exit(main(sys.argv[1:]))
