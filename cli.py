"""`python cli.py ...` from a checkout: the command line of planner/cli.py, which an installed
specplan runs as `specplan`."""

from planner.cli import cli, main  # noqa: F401  (`from cli import cli` keeps working in a checkout)

if __name__ == "__main__":
    main()
