"""The HF steering hooks under their original module name: everything here is :mod:`saesteer.hf`'s."""

from .hf import *  # noqa: F401,F403
from .hf import __all__  # noqa: F401
