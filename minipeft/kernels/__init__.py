"""Numba kernels, each the fast twin of a plain NumPy function; tests hold them equal.
One module per concern (ops.py: GPT-2's own ops and the table ``GPT2.ops`` runs;
attention.py; one per PEFT method). Importing this package compiles nothing: each module
is imported where it is used, and Numba compiles it (or loads its cache) then."""
