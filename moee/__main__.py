"""``python -m moee``: the command-line interface (see moee.cli)."""

from moee.cli import main

if __name__ == "__main__":
    main()
