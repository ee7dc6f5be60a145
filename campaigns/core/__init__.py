"""The pure campaign core: no I/O, no clock, no event loop; every function takes ``now``."""
