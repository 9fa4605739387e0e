"""`python -m facegate.cli`: the same command as the `facegate` script."""

from .main import main

main()
