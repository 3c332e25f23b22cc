"""Datasets: the on-disk format, validation, the synthetic circles and condition annotators.

Heavy submodules are imported where used; see :mod:`t2iops.data.dataset` for the contract.
"""
