"""specplan's command line: each command parses, calls one library function, prints.

Errors from the library (SpecplanError) are caught once, in `main`, and printed as one
line on stderr with exit code 2 for bad input.
"""

from __future__ import annotations

import json
import sys

import click

from planner.errors import SpecplanError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="specplan")
def cli():
    """specplan: choose, predict and run the fastest lossless speculative decoding set-up
    for a model on a GPU under a memory budget."""


# ---------------------------------------------------------------- hardware (issue 2)
# (commands: profile, profiles)

# ---------------------------------------------------------------- models (issue 2)
# (commands: models)

# ---------------------------------------------------------------- perf + search (issue 3)
# (commands: predict, plan)

# ---------------------------------------------------------------- runtime (issue 4)
# (commands: run)

# ---------------------------------------------------------------- S3D + demo (issue 5)
# (commands: adapt, autotune)

# ---------------------------------------------------------------- deployment (issue 7)
# (commands: export)


def main(argv=None) -> None:
    try:
        cli.main(args=argv, prog_name="specplan", standalone_mode=False)
    except SpecplanError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
