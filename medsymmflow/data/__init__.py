"""Datasets and samplers: MedMNIST 2-D (through the medmnist package), synthetic MedMNIST files, samplers.

Importing this package does not import medmnist (it creates ~/.medmnist on import); it is imported
when a flag is first looked up.
"""

from medsymmflow.data.augment import BatchAugment, batch_augment
from medsymmflow.data.files import (
    IMAGE_SUFFIXES,
    ImageFileDataset,
    ImageFiles,
    collate_image_files,
    find_image_files,
    image_file_dicts,
    list_image_files,
)
from medsymmflow.data.medmnist import (
    MEDMNIST_SIZES,
    MEDMNIST_SPLITS,
    MedMNISTArrays,
    MedMNISTDataset,
    canonical_flag,
    load_medmnist,
    medmnist_class_names,
    medmnist_filename,
    medmnist_info,
    medmnist_url,
    read_medmnist_npz,
    supported_flags,
)
from medsymmflow.data.sampling import class_balanced_weights, distributed_world, make_sampler
from medsymmflow.data.synthetic import synthetic_class_templates, write_synthetic_medmnist

__all__ = [
    "BatchAugment",
    "IMAGE_SUFFIXES",
    "ImageFileDataset",
    "ImageFiles",
    "MEDMNIST_SIZES",
    "MEDMNIST_SPLITS",
    "MedMNISTArrays",
    "MedMNISTDataset",
    "batch_augment",
    "canonical_flag",
    "class_balanced_weights",
    "collate_image_files",
    "distributed_world",
    "find_image_files",
    "image_file_dicts",
    "list_image_files",
    "load_medmnist",
    "make_sampler",
    "medmnist_class_names",
    "medmnist_filename",
    "medmnist_info",
    "medmnist_url",
    "read_medmnist_npz",
    "supported_flags",
    "synthetic_class_templates",
    "write_synthetic_medmnist",
]
