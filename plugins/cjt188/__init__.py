"""CJ/T 188-2004 valve-controlled water meters: codec, profiles, driver and simulator.
See README.md in this folder."""
