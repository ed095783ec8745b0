"""Dies while being imported, the way a crashing vendor DLL does."""

import os
import sys

sys.stderr.write("dies_loading: the vendor library crashed\n")
sys.stderr.flush()
os._exit(7)
