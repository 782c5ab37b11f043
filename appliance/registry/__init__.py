"""The model registry: finds packages, loads them (each decoder as one or more engine replicas),
and serves them from one table that hot reloads swap entries of.

`loading` turns a package folder into a ServedModel, `replicas` routes a model's requests over
its engines, `table` is the serving table (lookup, hold, reload, retire).
"""

from appliance.registry.loading import LoadSettings, ModelState, ServedModel, load_tokenizer
from appliance.registry.replicas import ReplicaSet
from appliance.registry.table import ModelRegistry, ReloadOutcome, ReloadResult

__all__ = ["LoadSettings", "ModelRegistry", "ModelState", "ReloadOutcome", "ReloadResult", "ReplicaSet",
           "ServedModel", "load_tokenizer"]
