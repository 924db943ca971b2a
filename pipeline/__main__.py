"""`python -m pipeline`: the mtrank CLI."""
import sys

from pipeline.cli import main

sys.exit(main())
