"""Numba kernels, each the fast twin of a plain NumPy function; tests hold them equal."""
from . import lora
