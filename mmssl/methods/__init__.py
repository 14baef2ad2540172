"""Training methods, one LightningModule per family, registered by name."""

from mmssl.methods.base import METHODS, MultimodalMethod, method_class, register_method
from mmssl.methods.taxonomy import TaxonomyMethod

__all__ = ["METHODS", "MultimodalMethod", "TaxonomyMethod", "method_class", "register_method"]
