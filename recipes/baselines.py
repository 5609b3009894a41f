"""Simple baselines for the demo model's validation loss: bits per sample of the held-out piece under
(1) the class histogram of the training pieces (order 0) and (2) the table of next-code given previous code (order 1),
both with add-one smoothing. Run: python recipes/baselines.py [DATA_DIR] [VALIDATION_FILE]"""

import sys
from pathlib import Path

import numpy as np

from fastwavenet.data import load_corpus, split_by_file

data = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/chopin-piano-4410"
held = sys.argv[2] if len(sys.argv) > 2 else "piece6.flac"
train, val = split_by_file(load_corpus([data], 4410, 256), [held])
codes = np.concatenate(train.codes)
unigram = np.bincount(codes, minlength=256) + 1.0
unigram /= unigram.sum()
bigram = np.ones((256, 256))
for c in train.codes:
    np.add.at(bigram, (c[:-1], c[1:]), 1)
bigram /= bigram.sum(axis=1, keepdims=True)
v = val.codes[0]
print(f"validation: {Path(val.names[0]).name}, {len(v)} samples")
print("uniform over 256 classes:          8.0000 bits/sample")
print(f"class histogram (order 0):         {-np.log2(unigram[v]).mean():.4f} bits/sample")
print(f"previous code -> next (order 1):   {-np.log2(bigram[v[:-1], v[1:]]).mean():.4f} bits/sample")
