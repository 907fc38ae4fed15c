from .far_field import far_field  # noqa: F401
from .feature_maps import FEATURE_MAPS, get_feature_map  # noqa: F401
from .near_field import near_field  # noqa: F401
