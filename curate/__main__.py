"""`python -m curate`: the `curate` command, for launchers that start a module (torchrun -m curate ...)."""

from curate_cli.main import main

if __name__ == "__main__":
    main()
