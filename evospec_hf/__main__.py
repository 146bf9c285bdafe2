"""`python -m evospec_hf <command>`: the same as `evospec-hf <command>` (see `evospec_hf.commands`)."""

import sys

from evospec_hf.commands import main

sys.exit(main())
