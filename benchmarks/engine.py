#!/usr/bin/env python3
"""Engine benchmark (issue: engine speed and memory). Same as ``mcdrop bench``.

python benchmarks/engine.py                 # CPU sizes, fp32, tables
python benchmarks/engine.py --device cuda --precision bf16   # the GPU sizes
"""

import sys

from mcdrop.bench import main

if __name__ == "__main__":
    sys.exit(main())
