"""The import path that the code file of MLflow models logged by nbnet 0.1 names
(``from nbnet.tracking import NbnetPyfuncModel``): kept so that those models still load."""

from nbnet.experiment.tracking.pyfunc import NbnetPyfuncModel

__all__ = ["NbnetPyfuncModel"]
