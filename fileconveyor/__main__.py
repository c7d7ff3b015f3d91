"""`python -m fileconveyor` is the `fileconveyor` command."""
import sys

from fileconveyor.cli import main

sys.exit(main())
