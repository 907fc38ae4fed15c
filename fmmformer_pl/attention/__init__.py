from .far_field import far_field, far_fields  # noqa: F401
from .feature_maps import FEATURE_MAPS, get_feature_map  # noqa: F401
from .near_field import near_field  # noqa: F401

# isort: split
# The blended attention module (blend.py, layer.py) builds on the functions above.
from .blend import PAPER_SCHEMES, Blend, FieldWeight, paper_scheme  # noqa: F401
from .layer import AttentionState, FMMAttention  # noqa: F401
