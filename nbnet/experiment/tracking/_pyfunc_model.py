"""MLflow "models from code" entry point for nbnet models.

``nbnet.experiment.tracking.pyfunc.log_model`` passes this file as ``python_model``; MLflow copies
it into the model (under this name, recorded in the model's ``MLmodel``) and runs it when the model
is loaded. It only imports the model class from the installed nbnet package, so loading a model
executes nbnet's own code and nothing stored with the model (the weights come from the
checksummed npz + JSON file, never from a pickle). Models logged by nbnet 0.1 carry the same
file as ``_pyfunc_model.py``, importing ``nbnet.tracking.NbnetPyfuncModel``.
"""

from mlflow.models import set_model

from nbnet.experiment.tracking.pyfunc import NbnetPyfuncModel

set_model(NbnetPyfuncModel())
