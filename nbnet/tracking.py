"""``nbnet.tracking.NbnetPyfuncModel``: the import path that the ``_pyfunc_model.py`` code file of
some stored MLflow models names; kept so that those models load."""

from nbnet.experiment.tracking.pyfunc import NbnetPyfuncModel

__all__ = ["NbnetPyfuncModel"]
