"""The one pool core under both surfaces: the engine front (Runtime), argument
checks, job outcomes, map feeds, the serial debug mode, and the pool's life
around fork, exit and SIGTERM."""
