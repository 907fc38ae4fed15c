"""Long Range Arena data modules, reading the official releases (see docs/data.md).

One re-export per line (``X as X`` marks it public), so adding a module is a one-line append.
"""

from data_modules.lra.listops import ListOpsDataModule as ListOpsDataModule
from data_modules.lra.retrieval import RetrievalDataModule as RetrievalDataModule
from data_modules.lra.text import TextDataModule as TextDataModule
from data_modules.lra.image import ImageDataModule as ImageDataModule
