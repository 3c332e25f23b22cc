"""t2iops: train, evaluate and ship T2I-Adapters."""
__version__ = "0.1.0"
