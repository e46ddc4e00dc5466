from .bundle_pretraining import BundlePretrainTask, datastore_records

__all__ = ["BundlePretrainTask", "datastore_records"]
