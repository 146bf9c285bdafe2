"""Same as `python -m evospec_hf.bench` (see its --help): methods side by side on the same prompts."""

import sys

from evospec_hf.bench.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
