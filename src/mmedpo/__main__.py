"""`python -m mmedpo ...`, e.g. under `accelerate launch -m mmedpo train`."""

from mmedpo.cli import app

app()
