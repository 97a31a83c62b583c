"""Convert a local Hugging Face Llama checkpoint: `utils/convert_hf.py --arch llama` (see that file)."""

import sys

from convert_hf import main

if __name__ == "__main__":
    sys.exit(main(default_arch="llama"))
