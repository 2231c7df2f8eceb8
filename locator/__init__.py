"""shotnet.locator: association, multilateration (Numba kernels), uncertainty, the service."""
