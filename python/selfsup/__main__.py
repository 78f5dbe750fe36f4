"""`python -m selfsup ARGS`: the selfsup command line."""

from selfsup._launcher import main

main()
