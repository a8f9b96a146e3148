"""gatescope's reading side: sites, families, models, the tracer and gate statistics."""

from probe.errors import GatescopeError
from probe.hooks import ForwardInfo, hook_sites
from probe.load import load_model
from probe.model import Batch, Dims, Model
from probe.sites import SITE_KINDS, Site, expand_sites
from probe.tracer import Reducer, Tracer

__all__ = [
    "SITE_KINDS",
    "Batch",
    "Dims",
    "ForwardInfo",
    "GatescopeError",
    "Model",
    "Reducer",
    "Site",
    "Tracer",
    "expand_sites",
    "hook_sites",
    "load_model",
]
