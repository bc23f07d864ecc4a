"""sisdropd: watch a drop folder and import each SIS file into Canvas exactly once."""

__version__ = "0.1.0"
