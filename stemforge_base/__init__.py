"""stemforge's base layer: helpers every package (cpi, builders, stemcells, terraform, ci) may import.

Contract: a module here imports only the standard library and third-party libraries, never a package of ours
(``cpi``, ``builders``, ``stemcells``, ``stemforge``, ``terraform``, ``ci``), and imports its third-party libraries
lazily where the package that uses it may be installed without them (``aws`` needs the ``aws`` extra).
"""
