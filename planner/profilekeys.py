"""Where a measured profile is kept in the cluster: the names, labels and data key the
profiling Job writes under and the operator reads back (both import them from here).

The ConfigMap ``exegpt-profile-<key>`` holds the profile's JSON under
``PROFILE_DATA_KEY``; it and the profiling Jobs carry ``LABEL_PROFILE`` set to the
key's digest (a label value holds at most 63 characters, a key may be longer).
"""

from __future__ import annotations

import hashlib
import re

GROUP = "exegpt.dev"
"""The API group of the project's resources, labels and annotations."""

PROFILE_DATA_KEY = "profile.json"
"""The ConfigMap data key that holds a profile's JSON."""

LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PROFILE = f"{GROUP}/profile"
ANNOTATION_PROFILE_KEY = f"{GROUP}/profile-key"
APP = "exegpt"
MANAGER = "exegpt-operator"
PROFILER = "profiler"


def profile_digest(profile_key: str) -> str:
    """The 12 hex digits that end a profile key (its content hash), or a hash of the
    key when it does not end in them."""
    tail = profile_key.rsplit("-", 1)[-1]
    if re.fullmatch(r"[0-9a-f]{12}", tail):
        return tail
    return hashlib.sha256(profile_key.encode()).hexdigest()[:12]


def profile_labels(profile_key: str) -> dict[str, str]:
    """The labels of a profile's ConfigMap and of its profiling Jobs."""
    return {
        LABEL_NAME: APP,
        LABEL_COMPONENT: PROFILER,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_PROFILE: profile_digest(profile_key),
    }
