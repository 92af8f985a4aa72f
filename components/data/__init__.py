"""The data contract and images: CSV splits and the dataset, fundus preprocessing, augmentation, synthetic data, patient-grouped folds."""
