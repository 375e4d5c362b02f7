"""`python -m shoal`: the same command line as the `shoal` console script."""

from shoal.cli import main

main()
