"""A module that takes a while to import, as Reticulum does on a small board."""

import time

time.sleep(1.5)
