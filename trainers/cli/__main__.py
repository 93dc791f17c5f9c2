"""`python -m trainers.cli`: the same as the `blsp-emo` command."""

import sys

from trainers.cli.main import main

sys.exit(main())
