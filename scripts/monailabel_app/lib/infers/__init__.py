from .bundle_network import BundleEmbeddingInfer, BundleFindingsInfer, BundleNetworkInfer

__all__ = ["BundleEmbeddingInfer", "BundleFindingsInfer", "BundleNetworkInfer"]
