"""Connected side (lock, wheels, build, bundle) and air-gapped side (load) of images."""
