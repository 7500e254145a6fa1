"""`python -m rnnkit` runs the `rnnkit` command; torchrun starts its processes this way
(`torchrun --nproc-per-node 2 -m rnnkit train ...`), and so does `rnnkit train --nproc 2`."""
from rnnkit.cli import main
from rnnkit.launch import run_and_exit

if __name__ == "__main__":
    run_and_exit(main)
