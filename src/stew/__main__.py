"""``python -m stew ...``: the ``stew`` command line."""

from stew.cli import main

if __name__ == "__main__":
    main()
