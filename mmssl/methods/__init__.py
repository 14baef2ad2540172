"""Training methods, one LightningModule per family, registered by name."""

from mmssl.methods.autoencoders import AEMethod, DCCAEMethod, RRAEMethod
from mmssl.methods.base import METHODS, MultimodalMethod, method_class, register_method
from mmssl.methods.cr_cca import CRCCAMethod
from mmssl.methods.mmvae import MMVAEMethod
from mmssl.methods.supervised import SupervisedMethod
from mmssl.methods.taxonomy import TaxonomyMethod

__all__ = [
    "METHODS", "AEMethod", "CRCCAMethod", "DCCAEMethod", "MMVAEMethod", "MultimodalMethod",
    "RRAEMethod", "SupervisedMethod", "TaxonomyMethod", "method_class", "register_method",
]
