"""TT-SNN method logic: TT-SVD, EVBMF rank selection, decomposing and merging models,
and parameter / MAC counts (``../shared/docs/METHODS.md`` section 2)."""
from .counting import Count, count_macs, count_params
from .decompose import decompose, decompose_model, merge_model, vbmf_rank
from .evbmf import EVBMFResult, evbmf
from .svd import max_ranks, tt_svd

__all__ = ["decompose", "decompose_model", "merge_model", "vbmf_rank", "evbmf", "EVBMFResult", "tt_svd",
           "max_ranks", "count_params", "count_macs", "Count"]
