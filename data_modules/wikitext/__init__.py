"""WikiText-103 word-level language modelling, read and batched as Transformer-XL does.

- :mod:`~data_modules.wikitext.prepare`: the official files, the vocabulary, the ``.npy`` cache;
- :mod:`~data_modules.wikitext.dataset`: stream batches (and full-context windows) from the cache;
- :mod:`~data_modules.wikitext.datamodule`: :class:`WikiText103DataModule`, the Lightning wiring.
"""

from data_modules.wikitext.datamodule import WikiText103DataModule
from data_modules.wikitext.dataset import FullContextDataset, LMStreamDataset, stream_windows
from data_modules.wikitext.prepare import EOS, UNK, build_corpus, resolve_wikitext_dir

__all__ = [
    "EOS",
    "UNK",
    "FullContextDataset",
    "LMStreamDataset",
    "WikiText103DataModule",
    "build_corpus",
    "resolve_wikitext_dir",
    "stream_windows",
]
