"""nbnet's version (one place: the package, model files and pyfunc requirements read it)."""

__version__ = "0.1.0"
