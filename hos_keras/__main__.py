"""`python -m hos_keras ...` runs the `hos-keras` command."""

import sys

from hos_keras.cli import main

sys.exit(main())
