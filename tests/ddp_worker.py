"""Run under torchrun by tests/test_train.py: trains the tiny preset and saves this rank's final weights."""
import os
import sys

import torch

from fastwavenet import preset
from fastwavenet.training import TrainOptions, train

data, run_dir = sys.argv[1], sys.argv[2]
options = TrainOptions(steps=3, batch_size=2, target_length=32, validation_files=0)
model = train([data], run_dir, preset("tiny"), options, progress=False)
torch.save(model.state_dict(), os.path.join(os.path.dirname(run_dir), f"rank{os.environ['RANK']}.pt"))
