"""`python -m dispatch_client.cli`: the same as the `dispatch-cli` script."""

from . import main

main()
