"""The training program (``torchrun ... -m training``): see ``training/README.md``."""
