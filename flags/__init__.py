"""The flagd flag files shipped as working examples, and the keys code refers to them by.

The JSON files in this folder are the embedded default flag source of the control plane
(`control-plane serve --flags flags/`). Code never spells a flag key as a literal: it imports
the constant from here, so a renamed flag is one edit and a grep away.
"""

from pathlib import Path

__all__ = [
    "AB_TEST_ROUTER",
    "CANARY_ROUTER",
    "FLAGS_DIR",
    "PINNED_ROUTER",
    "REGION_ROUTER",
    "ROUTING_FLAGS",
    "VECTOR_HOOK_PIPELINE",
]

#: Folder holding the shipped `*.flagd.json` files.
FLAGS_DIR = Path(__file__).resolve().parent

#: Hash bucketing on the targeting key: a sticky 50/50 A/B test between two models.
AB_TEST_ROUTER = "ab-test-router"
#: Label targeting: users whose `user-region` is "cn" go to the in-region model.
REGION_ROUTER = "region-router"
#: Weighted canary; the weight may come from the request (`x-canary-weight`).
CANARY_ROUTER = "canary-router"
#: A tester pins a model version with `x-canary-version`; everyone else gets stable.
PINNED_ROUTER = "pinned-router"

ROUTING_FLAGS = (AB_TEST_ROUTER, REGION_ROUTER, CANARY_ROUTER, PINNED_ROUTER)

#: Per-tenant vector search hook pipeline (an object flag read by `vector_hooks`).
VECTOR_HOOK_PIPELINE = "vector-hook-pipeline"
