"""Run the ``secretsvc`` command as ``python -m secretsvc``."""

from secretsvc.cli import main

main()
