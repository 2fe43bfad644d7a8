"""The public pools: ``Executor`` (concurrent.futures), ``Pool`` (multiprocessing) and
their result handles, thin stdlib-faithful adapters over the one pool core (runtime/)."""
