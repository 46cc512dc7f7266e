"""Defaults a strongSwan user expects, in one place (docs/mesh-yaml.md quotes them).

strongSwan's own defaults: IKE rekey 4h, CHILD rekey 1h, hard lifetime = rekey + 10 % (over_time),
random jitter = that 10 % (rand_time).  DPD every 30 s, peer dead after 150 s.
"""

from __future__ import annotations

from meshsec.api.v1 import spec_pb2

DEFAULT_PROFILE = "default"
IKE_PROPOSALS = ("aes128gcm16-prfsha256-x25519", "aes256-sha256-modp2048")
ESP_PROPOSALS = ("aes128gcm16", "aes256-sha256")
IKE_REKEY = 4 * 3600
CHILD_REKEY = 3600
DPD_INTERVAL = 30
DPD_TIMEOUT = 150


def over_time(rekey: int) -> int:
    """strongSwan's default margin between rekey and hard expiry: 10 % of the rekey time."""
    return rekey // 10


def default_profile(name: str = DEFAULT_PROFILE) -> spec_pb2.Profile:
    return spec_pb2.Profile(
        name=name,
        ike_proposals=IKE_PROPOSALS,
        esp_proposals=ESP_PROPOSALS,
        ike_lifetime=spec_pb2.Lifetime(
            rekey_seconds=IKE_REKEY,
            life_seconds=IKE_REKEY + over_time(IKE_REKEY),
            jitter_seconds=over_time(IKE_REKEY),
        ),
        child_lifetime=spec_pb2.Lifetime(
            rekey_seconds=CHILD_REKEY,
            life_seconds=CHILD_REKEY + over_time(CHILD_REKEY),
            jitter_seconds=over_time(CHILD_REKEY),
        ),
        dpd_interval_seconds=DPD_INTERVAL,
        dpd_timeout_seconds=DPD_TIMEOUT,
        auth=spec_pb2.AUTH_METHOD_CERTIFICATE,
    )
