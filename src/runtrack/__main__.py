"""``python -m runtrack``: the ``runtrack`` command (needs the ``cli`` extra)."""

from runtrack.cli import main

if __name__ == "__main__":
    main()
