"""MLflow "models from code" entry point for nbnet models.

``tracking.log_model`` passes this file as ``python_model``; MLflow copies it into the model as
``python_model.py`` and runs it when the model is loaded. It only imports the model class from the
installed nbnet package, so loading a model executes nbnet's own code and nothing stored with the
model (the weights come from the checksummed npz + JSON file, never from a pickle).
"""

from mlflow.models import set_model

from nbnet.experiment.tracking import NbnetPyfuncModel

set_model(NbnetPyfuncModel())
