"""`python -m cupyserve.server ...` is the `cupyserve` command."""
import sys

from .cli import main

sys.exit(main())
