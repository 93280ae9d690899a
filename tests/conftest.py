import os
import tempfile

# Tests run on the CPU, offline, without W&B, before jax is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One on-disk cache of compiled XLA programs for the suite and every process it starts:
# dozens of runs compile the same small programs. The cache key holds the program, the
# jax version and the devices, so a hit is the same executable.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "dfm-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: end-to-end runs of a minute or more (skip with -m 'not slow')")
