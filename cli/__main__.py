"""`python -m mtrank.cli`: the mtrank command."""
import sys

from mtrank.cli.main import main

sys.exit(main())
