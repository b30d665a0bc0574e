"""Neural style transfer (Gatys et al. 2016) on pretrained CNN features, with SWAG as an option (Wang et al.
2021).

images: named samples / files → tensors, YUV; features: truncated feature networks; losses; transfer: the
optimisation; figures: panel and loss curves. The stage `cnnlab style` (stages/style.py) ties them together.
"""

from cnnlab.style.features import FeatureNet, feature_net
from cnnlab.style.transfer import Result, Settings, stylise

__all__ = ["FeatureNet", "Result", "Settings", "feature_net", "stylise"]
