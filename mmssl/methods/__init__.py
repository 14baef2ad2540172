"""Training methods, one LightningModule per family, registered by name.

Importing this package imports every module in it, and each method registers itself
(:data:`METHODS`): ``taxonomy``, ``supervised``, ``ae``, ``dccae``, ``cr_cca``, ``rr_ae`` and
``mmvae``. See :mod:`mmssl.methods.base` for what a method declares and ``CONTRIBUTING.md`` for
adding one (or :mod:`mmssl.plugins` for one that lives outside mmssl).
"""

import sys

from mmssl.methods.autoencoders import AEMethod, AESettings, DCCAEMethod, RRAEMethod
from mmssl.methods.base import (
    METHODS,
    MethodInputs,
    MethodTraits,
    ModelSettings,
    MultimodalMethod,
    OptimSettings,
    method_class,
    method_sections,
    register_method,
)
from mmssl.methods.cr_cca import CRCCAMethod
from mmssl.methods.mmvae import MMVAEMethod, MMVAESettings
from mmssl.methods.supervised import SupervisedMethod, SupervisedSettings
from mmssl.methods.taxonomy import ObjectiveSettings, TaxonomyMethod
from mmssl.plugins import import_submodules

# A new method is one module in this package: it registers itself when imported.
import_submodules(sys.modules[__name__])

__all__ = [
    "METHODS", "AEMethod", "AESettings", "CRCCAMethod", "DCCAEMethod", "MMVAEMethod",
    "MMVAESettings", "MethodInputs", "MethodTraits", "ModelSettings", "MultimodalMethod",
    "ObjectiveSettings", "OptimSettings", "RRAEMethod", "SupervisedMethod", "SupervisedSettings",
    "TaxonomyMethod", "method_class", "method_sections", "register_method",
]
