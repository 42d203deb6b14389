"""Test-wide setup: four fake CPU devices for the data-parallel tests.

JAX reads the device count when its backend initializes, so this runs before any test module
touches JAX. Tests that do not ask for a mesh run on one device as usual.
"""

import jax

jax.config.update("jax_num_cpu_devices", 4)
