"""A Child SA rekey whose exchange crosses an IKE SA rekey from the other side (both in flight at once).

Regression test: KEYMAT must come from SK_d of the IKE SA the CREATE_CHILD_SA exchange ran on (RFC
7296 §2.17), not from whichever IKE SA is current when the exchange completes.  Before the fix, one
end had already switched to the new IKE SA and derived the new Child SA's keys from the new SK_d, the
other from the old one: every packet on that SA failed its ICV until the next rekey (seen as
icv_failure drops under load in tests/system/test_fleet_dataplane.py's rekey test).
"""

from __future__ import annotations

import pytest
from meshsec.agent.ike.events import ChildSaRekeyed, IkeSaRekeyed

from .harness import Pair, make_configs, of


def _keys_agree(p: Pair) -> bool:
    a_in = {c.spi_in_int: c.keymat_in for c in p.a.children.values()}
    a_out = {c.spi_out_int: c.keymat_out for c in p.a.children.values()}
    b_in = {c.spi_in_int: c.keymat_in for c in p.b_session.children.values()}
    b_out = {c.spi_out_int: c.keymat_out for c in p.b_session.children.values()}
    return bool(a_in) and a_in == b_out and a_out == b_in


@pytest.mark.parametrize(
    "order",
    [
        [("a", "ike"), ("b", "child")],
        [("b", "ike"), ("a", "child")],
        [("a", "child"), ("b", "ike")],
        [("b", "child"), ("a", "ike")],
    ],
)
def test_child_rekey_crossing_an_ike_rekey_derives_the_same_keys_at_both_ends(
    order: list[tuple[str, str]],
) -> None:
    p = Pair(*make_configs()).start()
    for who, what in order:  # both requests leave before either answer arrives
        s = p.a if who == "a" else p.b_session
        (s.rekey_ike if what == "ike" else s.rekey_child)(p.now)
        if who == "b":
            p.b.sync(p.b_session)
    p.pump()
    assert len(of(p.ev_a, IkeSaRekeyed)) == 1 and len(of(p.ev_b, IkeSaRekeyed)) == 1
    assert len(of(p.ev_a, ChildSaRekeyed)) == 1 and len(of(p.ev_b, ChildSaRekeyed)) == 1
    assert len(p.a.children) == 1 and _keys_agree(p)
