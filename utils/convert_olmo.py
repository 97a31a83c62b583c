"""Convert a local Hugging Face OLMo-2 checkpoint: `utils/convert_hf.py --arch olmo2` (see that file)."""

import sys

from convert_hf import main

if __name__ == "__main__":
    sys.exit(main(default_arch="olmo2"))
