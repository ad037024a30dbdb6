"""Run configs shipped inside the package, so that `mmedpo run` means the same in any folder.

`DEMO` (demo.yaml) is the default of every command; configs/demo.yaml in the repository links to it.

    from mmedpo.config import load_config
    from mmedpo.configs import DEMO

    config = load_config(DEMO, ["name=my-demo", "train.beta=0.2"])
"""

from pathlib import Path

DEMO = Path(__file__).with_name("demo.yaml")
