"""Data modules: the Long Range Arena tasks (data_modules.lra), WikiText-103, and the shared
machinery in data_modules.common (errors, the .npy cache, path resolution, the base module)."""
