"""Data modules: the Long Range Arena tasks (data_modules.lra), WikiText-103
(data_modules.wikitext), an offline WikiText-shaped corpus (data_modules.debian_docs), and the
shared machinery in data_modules.common (errors, the .npy cache, path resolution, the
classification base, and the batch layouts every task reads: data_modules.common.batch).

A task's package keeps its concerns apart: preparing (parse the official files, build the
vocabulary, write the cache) or generating the files, the Dataset that reads the cache, and the
LightningDataModule that wires them; a generator's command line is the package's ``__main__``."""
