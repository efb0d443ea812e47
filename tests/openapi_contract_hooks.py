"""Schemathesis hooks for tests/test_openapi_contract.py (loaded through SCHEMATHESIS_HOOKS).

Half the generated cases get path parameters that name something that exists on the server
under test (flag keys, stored versions, the token's name), read from CONTRACT_EXISTING (JSON),
so that operations are exercised past their 404s; the other half stay as generated.
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

_EXISTING: dict[str, list[Any]] = json.loads(os.environ.get("CONTRACT_EXISTING", "{}"))


@schemathesis.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    known = {name: _EXISTING[name] for name in path_parameters or {} if _EXISTING.get(name)}
    if not known:
        return st.just(path_parameters)
    steered = st.fixed_dictionaries(
        {name: st.sampled_from(values) for name, values in known.items()}
    )
    return st.one_of(
        st.just(path_parameters), steered.map(lambda chosen: {**path_parameters, **chosen})
    )
