"""`python -m cnnlab <command> ...`, as the `cnnlab` script."""

from cnnlab.cli import main

main()
