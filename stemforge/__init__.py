"""The ``stemforge`` command line: subcommands from each package (stemcells, cpi, doctor, demo, ...)."""
