"""Numba kernels, each the fast twin of a plain NumPy function; tests hold them equal.
One module per concern (ops.py: GPT-2's own ops and the table ``GPT2.ops`` runs;
attention.py; one per PEFT method). Importing them compiles nothing: Numba compiles each
kernel (or loads its cache) at its first call."""
